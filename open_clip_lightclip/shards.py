"""Webdataset shards that ``open_clip_train`` reads as they are.

``write_shards`` writes ``(key, image, caption)`` samples as ``{prefix}-{i:05d}.tar`` with
``.png`` + ``.txt`` members and a ``sizes.json`` (so ``--train-num-samples`` is not needed).
``synthetic_samples`` makes a small, learnable captioned-shape dataset for tests and the
quick demo: "a red circle on a white background", drawn with PIL.
"""
import io
import json
import random
import tarfile
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Tuple

from PIL import Image, ImageDraw

__all__ = ["write_shards", "synthetic_samples", "write_synthetic_shards", "COLORS", "SHAPES"]

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 170), "orange": (240, 140, 30), "black": (20, 20, 20), "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUNDS = {"white": (250, 250, 250), "light blue": (190, 220, 245), "beige": (235, 225, 200)}

Sample = Tuple[str, Image.Image, str]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def write_shards(
        samples: Iterable[Sample],
        out_dir,
        prefix: str = "train",
        samples_per_shard: int = 1000,
        image_format: str = "png",
) -> List[Path]:
    """Write samples to ``out_dir/{prefix}-NNNNN.tar`` and record their sizes in ``sizes.json``.

    A sample is ``(key, image, caption)`` or ``(key, image, caption, meta)``; a ``meta`` dict
    is stored as ``<key>.json`` (the trainer ignores it). ``image_format`` is ``png`` or ``jpg``.
    Refuses to overwrite existing shards of the same prefix.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be png or jpg, not {image_format!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(out_dir.glob(f"{prefix}-*.tar"))
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; choose another output folder or prefix")
    sizes_path = out_dir / "sizes.json"
    sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
    paths: List[Path] = []
    tar, count, mtime = None, 0, time.time()
    for key, image, caption, *rest in samples:
        if tar is None or count == samples_per_shard:
            if tar is not None:
                tar.close()
                sizes[paths[-1].name] = count
            paths.append(out_dir / f"{prefix}-{len(paths):05d}.tar")
            tar, count = tarfile.open(paths[-1], "w"), 0
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG" if image_format == "png" else "JPEG",
                                  **({} if image_format == "png" else {"quality": 95}))
        _add_bytes(tar, f"{key}.{image_format}", buf.getvalue(), mtime)
        _add_bytes(tar, f"{key}.txt", caption.encode("utf-8"), mtime)
        if rest and rest[0] is not None:
            _add_bytes(tar, f"{key}.json", json.dumps(rest[0]).encode("utf-8"), mtime)
        count += 1
    if tar is not None:
        tar.close()
        sizes[paths[-1].name] = count
    sizes_path.write_text(json.dumps(sizes, indent=1, sort_keys=True))
    return paths


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        w = (x1 - x0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
        draw.rectangle((x0, y0 + w, x1, y1 - w), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def synthetic_samples(num_samples: int, image_size: int = 64, seed: int = 0) -> Iterator[Sample]:
    """Captioned coloured shapes: a small, learnable image-text task with no download."""
    rng = random.Random(seed)
    for i in range(num_samples):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        background = rng.choice(list(BACKGROUNDS))
        image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[background])
        size = rng.uniform(0.35, 0.7) * image_size
        x0, y0 = rng.uniform(0, image_size - size), rng.uniform(0, image_size - size)
        _draw_shape(ImageDraw.Draw(image), shape, (x0, y0, x0 + size, y0 + size), COLORS[color])
        yield f"{i:08d}", image, f"a {color} {shape} on a {background} background"


def write_synthetic_shards(
        out_dir,
        num_samples: int = 256,
        image_size: int = 64,
        samples_per_shard: int = 128,
        seed: int = 0,
        prefix: str = "train",
) -> List[Path]:
    return write_shards(synthetic_samples(num_samples, image_size, seed), out_dir, prefix, samples_per_shard)

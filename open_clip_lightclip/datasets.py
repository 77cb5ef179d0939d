"""Captioned-image sources for ``open-clip-lightclip build-shards`` and the demo.

A source yields :class:`Record` s (an image file, its caption, an optional category);
:func:`build_shards` loads each image once, composites transparency on white, resizes it
to the target resolution, splits the records deterministically into ``train`` and
``heldout`` and writes OpenCLIP-ready webdataset shards with a ``sizes.json``.

Sources known out of the box:

- :func:`folder_records`: an image folder with a sidecar ``.txt`` caption per image
  (``cat.jpg`` + ``cat.txt``); the first folder level under the root is the category.
- :func:`csv_records`: a CSV/TSV with OpenCLIP's column convention (``--csv-img-key
  filepath``, ``--csv-caption-key title``); relative image paths are looked up next to
  the CSV file, then in the current directory.
- :func:`openclipart_records`: the Debian ``openclipart-png`` + ``openclipart-svg``
  packages; captions from each SVG's ``dc:title`` and keywords, the icon, shape and
  gradient folders dropped, the top-level folder as the category.

:func:`fashion_mnist` reads the Debian ``dataset-fashion-mnist`` package (IDX files).
"""
import csv
import gzip
import hashlib
import html
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

__all__ = [
    "Record", "BuildStats", "folder_records", "csv_records", "openclipart_records", "svg_caption",
    "is_heldout", "load_image", "build_shards", "fashion_mnist", "read_shard_samples",
    "OPENCLIPART_ROOT", "FASHION_MNIST_ROOT", "FASHION_MNIST_CLASSES", "DEBIAN_PACKAGES", "IMAGE_EXTENSIONS",
]

OPENCLIPART_ROOT = Path("/usr/share/openclipart")
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGES = ("openclipart-png", "openclipart-svg", "dataset-fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# folders of the clip-art collection that are not pictures of things (path components)
OPENCLIPART_DROP = re.compile(r"^(icons?|shapes?|gradients?)$", re.IGNORECASE)
# titles that say nothing about the picture
_JUNK_TITLE = re.compile(r"^(various cliparts?|clipart by .*|hash\(0x[0-9a-f]+\)|untitled.*|image|drawing|)$",
                         re.IGNORECASE)
_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_CC = "{http://web.resource.org/cc/}"


@dataclass
class Record:
    key: str  # stable id: decides the train / held-out split, becomes the webdataset key
    path: Path  # image file
    caption: str
    category: Optional[str] = None


@dataclass
class BuildStats:
    seen: int = 0
    written: Dict[str, int] = field(default_factory=dict)  # split -> samples
    broken: int = 0  # unreadable / corrupt images
    no_caption: int = 0  # missing or empty caption
    broken_files: List[str] = field(default_factory=list)


def _clean(text: str) -> str:
    return " ".join(html.unescape(str(text)).replace("_", " ").split())


# keywords that say nothing about the picture: metadata junk of the clip-art collection
_JUNK_KEYWORD = re.compile(r"^(hash|unsorted|mapsym|0x[0-9a-f]+|hash\(0x[0-9a-f]+\))$", re.IGNORECASE)


# ---------------------------------------------------------------- sources


def folder_records(root, stats: Optional[BuildStats] = None) -> Iterator[Record]:
    """Images under ``root`` (recursively) with a sidecar ``<stem>.txt`` caption."""
    root = Path(root)
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        rel = path.relative_to(root)
        txt = path.with_suffix(".txt")
        caption = _clean(txt.read_text(encoding="utf-8", errors="replace")) if txt.is_file() else ""
        if not caption:
            if stats is not None:
                stats.no_caption += 1
            continue
        category = rel.parts[0] if len(rel.parts) > 1 else None
        yield Record(str(rel.with_suffix("")), path, caption, category)


def csv_records(path, img_key: str = "filepath", caption_key: str = "title", sep: Optional[str] = None,
                category_key: Optional[str] = None, stats: Optional[BuildStats] = None) -> Iterator[Record]:
    """Rows of a CSV/TSV in OpenCLIP's convention (``--csv-img-key``, ``--csv-caption-key``).

    ``sep=None`` sniffs the header line: a tab makes it a TSV, otherwise a comma.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        if sep is None:
            header = f.readline()
            f.seek(0)
            sep = "\t" if "\t" in header else ","
        reader = csv.DictReader(f, delimiter=sep)
        missing = [k for k in (img_key, caption_key, category_key) if k and k not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])}); "
                             "set --csv-img-key / --csv-caption-key / --csv-separator")
        for i, row in enumerate(reader):
            caption = _clean(row.get(caption_key) or "")
            if not caption:
                if stats is not None:
                    stats.no_caption += 1
                continue
            image = Path(row[img_key] or "")
            if not image.is_absolute():
                image = path.parent / image if (path.parent / image).exists() else image
            category = _clean(row[category_key]) if category_key and row.get(category_key) else None
            yield Record(f"{i:08d}", image, caption, category)


def svg_caption(svg_path, fallback: str = "", max_keywords: int = 8) -> str:
    """A caption from an SVG's metadata: ``dc:title``, then its keywords (``dc:subject``)."""
    title, keywords = "", []
    try:
        tree = ET.parse(svg_path)
        work = tree.find(f".//{_CC}Work")
        if work is not None:
            title = _clean(work.findtext(f"{_DC}title") or "")
            subject = work.find(f"{_DC}subject")
            if subject is not None:
                keywords = [li.text for li in subject.iter(f"{_RDF}li")]
    except (ET.ParseError, OSError, ValueError):
        pass
    if _JUNK_TITLE.match(title):
        title = ""
    title = title or _clean(fallback)
    words = set(title.lower().split())
    kept: List[str] = []
    for kw in keywords:
        kw = _clean(kw or "").lower()
        if (not kw or "://" in kw or kw.startswith("www.") or kw in words or kw in kept or len(kw) > 30
                or _JUNK_KEYWORD.match(kw)):
            continue
        kept.append(kw)
    kept = kept[:max_keywords]
    if not title:
        return ", ".join(kept)
    return f"{title}: {', '.join(kept)}" if kept else title


def _name_from_file(stem: str) -> str:
    """``bird_of_peace_mauro_oliv_01`` -> ``bird of peace mauro oliv``: a last-resort caption."""
    return _clean(re.sub(r"[_\-]+\d*$", "", stem).replace("-", " "))


def openclipart_records(root=OPENCLIPART_ROOT, stats: Optional[BuildStats] = None) -> Iterator[Record]:
    """The Debian clip-art collection: ``<root>/png/**.png`` captioned from ``<root>/svg/**.svg``.

    Symlinked duplicates are skipped; folders named icon(s) / shape(s) / gradient(s) are dropped.
    """
    root = Path(root)
    png_root, svg_root = root / "png", root / "svg"
    if not png_root.is_dir():
        raise FileNotFoundError(f"{png_root} not found; install it with: apt-get install -y {' '.join(DEBIAN_PACKAGES)}")
    for path in sorted(png_root.rglob("*.png")):
        rel = path.relative_to(png_root)
        if path.is_symlink() or any(OPENCLIPART_DROP.match(part) for part in rel.parts[:-1]):
            continue
        caption = svg_caption(svg_root / rel.with_suffix(".svg"), fallback=_name_from_file(path.stem))
        if not caption:
            if stats is not None:
                stats.no_caption += 1
            continue
        category = rel.parts[0] if len(rel.parts) > 1 else None
        yield Record(str(rel.with_suffix("")), path, caption, category)


# ---------------------------------------------------------------- split, images, shards


def is_heldout(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic split: a hash of (seed, key), independent of order and of the other records."""
    digest = hashlib.sha1(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def load_image(path, size: int, mode: str = "pad"):
    """Open an image, composite any transparency on white, resize to ``size`` x ``size``.

    ``mode="pad"`` fits the whole picture and pads with white (good for clip art);
    ``mode="crop"`` resizes the short side and centre-crops (OpenCLIP's own preprocessing).
    Raises on unreadable files.
    """
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            im = im.convert("RGBA")
            canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
            canvas.alpha_composite(im)
            im = canvas
        im = im.convert("RGB")
    w, h = im.size
    if w < 1 or h < 1:
        raise ValueError("empty image")
    if mode == "crop":
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        return im.crop((left, top, left + size, top + size))
    scale = size / max(w, h)
    im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return out


def _load_or_none(job):
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning for very large clip art
            return load_image(*job)
    except Exception:  # noqa: BLE001 - corrupt, truncated, unsupported, too large: all count as broken
        return None


def _brace(prefix: str, count: int) -> str:
    return f"{prefix}-{{00000..{count - 1:05d}}}.tar" if count > 1 else f"{prefix}-00000.tar"


def build_shards(
        records: Iterable[Record],
        out_dir,
        image_size: int = 96,
        heldout_fraction: float = 0.1,
        split_seed: int = 0,
        samples_per_shard: int = 1000,
        image_format: str = "png",
        resize: str = "pad",
        stats: Optional[BuildStats] = None,
        progress: bool = True,
        total: Optional[int] = None,
        source: str = "",
        workers: int = 0,
) -> dict:
    """Write ``train-*.tar`` and ``heldout-*.tar`` (+ ``sizes.json``, ``build_info.json``) to ``out_dir``.

    Each sample holds ``<key>.<png|jpg>``, ``<key>.txt`` and ``<key>.json`` (caption,
    category, source file). Broken images are skipped and counted. Existing shards are
    never overwritten: the call refuses before writing anything. ``workers > 1`` decodes
    and resizes images in that many processes (the output does not depend on it).
    Returns the build info.
    """
    from .shards import write_shards

    out_dir = Path(out_dir)
    existing = sorted(out_dir.glob("train-*.tar")) + sorted(out_dir.glob("heldout-*.tar"))
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; refusing to overwrite shards "
                              "(choose another output folder or delete the old one)")
    stats = stats if stats is not None else BuildStats()
    records = list(records)
    splits: Dict[str, List[Record]] = {"train": [], "heldout": []}
    for r in records:
        splits["heldout" if is_heldout(r.key, heldout_fraction, split_seed) else "train"].append(r)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total or len(records), desc="build-shards", unit="img", dynamic_ncols=True)

    categories: Dict[str, Dict[str, int]] = {}
    used_keys = set()

    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(workers)

    def _samples(split: str):
        jobs = [(r.path, image_size, resize) for r in splits[split]]
        loaded = pool.imap(_load_or_none, jobs, chunksize=4) if pool is not None else map(_load_or_none, jobs)
        for r, image in zip(splits[split], loaded):
            stats.seen += 1
            if bar is not None:
                bar.update(1)
            if image is None:  # any unreadable image is skipped and counted
                stats.broken += 1
                stats.broken_files.append(str(r.path))
                if bar is not None:
                    bar.set_postfix(broken=stats.broken)
                continue
            stats.written[split] = stats.written.get(split, 0) + 1
            if r.category:
                counts = categories.setdefault(split, {})
                counts[r.category] = counts.get(r.category, 0) + 1
            key = base = re.sub(r"[^A-Za-z0-9_-]+", "_", r.key)  # no dots: webdataset splits keys at dots
            n = 1
            while key in used_keys:
                n += 1
                key = f"{base}_{n}"
            used_keys.add(key)
            meta = {"caption": r.caption, "category": r.category, "file": str(r.path)}
            yield key, image, r.caption, meta

    shards = {}
    try:
        for split in ("train", "heldout"):
            paths = write_shards(_samples(split), out_dir, split, samples_per_shard, image_format=image_format)
            shards[split] = len(paths)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
    info = {
        "source": source,
        "image_size": image_size,
        "image_format": image_format,
        "resize": resize,
        "heldout_fraction": heldout_fraction,
        "split_seed": split_seed,
        "seen": stats.seen,
        "written": {s: stats.written.get(s, 0) for s in ("train", "heldout")},
        "skipped_broken": stats.broken,
        "skipped_no_caption": stats.no_caption,
        "broken_files": stats.broken_files[:100],
        "categories": categories,
        "train_data": str(out_dir / _brace("train", shards.get("train", 0))) if shards.get("train") else None,
        "heldout_data": str(out_dir / _brace("heldout", shards.get("heldout", 0))) if shards.get("heldout") else None,
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=1))
    return info


def read_shard_samples(pattern: str) -> Iterator[Tuple[str, "object", str, dict]]:
    """``(key, PIL image, caption, meta)`` of every sample in the shards of a brace pattern."""
    import io
    import tarfile

    import braceexpand
    from PIL import Image

    for url in braceexpand.braceexpand(pattern):
        members: Dict[str, Dict[str, bytes]] = {}
        order: List[str] = []
        with tarfile.open(url) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if key not in members:
                    members[key] = {}
                    order.append(key)
                members[key][ext] = tar.extractfile(m).read()
        for key in order:
            parts = members[key]
            data = parts.get("png") or parts.get("jpg") or parts.get("jpeg") or parts.get("webp")
            if data is None or "txt" not in parts:
                continue
            image = Image.open(io.BytesIO(data)).convert("RGB")
            meta = json.loads(parts["json"]) if "json" in parts else {}
            yield key, image, parts["txt"].decode("utf-8"), meta


# ---------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path):
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "test", root=FASHION_MNIST_ROOT):
    """``(images uint8 [N, 28, 28], labels int [N], class names)`` of Fashion-MNIST's train or test split."""
    root = Path(root)
    prefix = {"test": "t10k", "train": "train"}[split]
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images.is_file():
        raise FileNotFoundError(f"{images} not found; install it with: apt-get install -y dataset-fashion-mnist")
    return _read_idx(images), _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype("int64"), FASHION_MNIST_CLASSES

"""Webdataset shards that ``open_clip_train`` reads as they are: writing, building, reading.

:func:`write_shards` writes ``(key, image, caption[, meta])`` samples as ``{prefix}-{i:05d}.tar``
with ``.png`` + ``.txt`` (+ ``.json``) members and a ``sizes.json`` (so ``--train-num-samples``
is not needed). :func:`build_shards` loads each :class:`~.sources.Record`'s image once,
composites transparency on white, resizes it, splits the records deterministically into
``train`` and ``heldout`` and writes both splits. :func:`read_shard_samples` reads them back.
"""
import hashlib
import io
import json
import os
import re
import tarfile
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from PIL import Image

from .owned import OutputFolder
from .sources import BuildStats, Record

__all__ = ["write_shards", "add_tar_member", "is_heldout", "load_image", "build_shards", "read_shard_members",
           "read_shard_samples"]

Sample = Tuple[str, Image.Image, str]


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
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
        folder: Optional[OutputFolder] = None,
) -> List[Path]:
    """Write samples to ``out_dir/{prefix}-NNNNN.tar`` and record their sizes in ``sizes.json``.

    A sample is ``(key, image, caption)`` or ``(key, image, caption, meta)``; a ``meta`` dict
    is stored as ``<key>.json`` (the trainer ignores it). ``image_format`` is ``png`` or ``jpg``.
    Refuses to overwrite existing shards of the same prefix. With ``folder``, every file is recorded as that
    command's before it is created (and one it did not write is never written over).
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
            if folder is not None:
                folder.claim(paths[-1])
            tar, count = tarfile.open(paths[-1], "w"), 0
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG" if image_format == "png" else "JPEG",
                                  **({} if image_format == "png" else {"quality": 95}))
        add_tar_member(tar, f"{key}.{image_format}", buf.getvalue(), mtime)
        add_tar_member(tar, f"{key}.txt", caption.encode("utf-8"), mtime)
        if rest and rest[0] is not None:
            add_tar_member(tar, f"{key}.json", json.dumps(rest[0]).encode("utf-8"), mtime)
        count += 1
    if tar is not None:
        tar.close()
        sizes[paths[-1].name] = count
    if folder is not None:
        folder.claim(sizes_path)
    sizes_path.write_text(json.dumps(sizes, indent=1, sort_keys=True))
    return paths


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


_OUTPUTS = r"(train|heldout)-\d{5}\.tar|sizes\.json|build_info\.json"  # what build_shards writes


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
        force: bool = False,
) -> dict:
    """Write ``train-*.tar`` and ``heldout-*.tar`` (+ ``sizes.json``, ``build_info.json``) to ``out_dir``.

    Each sample holds ``<key>.<png|jpg>``, ``<key>.txt`` and ``<key>.json`` (caption,
    category, source file). Broken images are skipped and counted. Existing shards are
    never overwritten: the call refuses before writing anything. ``workers > 1`` decodes
    and resizes images in that many processes (the output does not depend on it).
    A folder holding files this function did not write is refused (``force``: written beside them, never
    over them; the shards it wrote there before are replaced). Returns the build info.
    """
    if image_size < 1 or samples_per_shard < 1:
        raise ValueError(f"image_size and samples_per_shard must be >= 1, got {image_size} and {samples_per_shard}")
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    out_dir = Path(out_dir)
    folder = OutputFolder(out_dir, "build-shards", force=force, writes=lambda f: re.fullmatch(_OUTPUTS, f) is not None)
    folder.check()
    if force:
        folder.remove_own(_OUTPUTS)
    existing = sorted(out_dir.glob("train-*.tar")) + sorted(out_dir.glob("heldout-*.tar"))
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; refusing to overwrite shards "
                              "(choose another output folder, or pass --force to replace the shards build-shards "
                              "wrote there)")
    stats = stats if stats is not None else BuildStats()
    records = list(records)
    splits: Dict[str, List[Record]] = {"train": [], "heldout": []}
    for r in records:
        splits["heldout" if is_heldout(r.key, heldout_fraction, split_seed) else "train"].append(r)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total or len(records), desc="build-shards", unit="img", dynamic_ncols=True, disable=False)

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
            paths = write_shards(_samples(split), out_dir, split, samples_per_shard, image_format=image_format,
                                 folder=folder)
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
    folder.claim(out_dir / "build_info.json").write_text(json.dumps(info, indent=1))
    return info


def read_shard_members(path: str) -> List[Tuple[str, Dict[str, bytes]]]:
    """``(key, {extension: bytes})`` of every sample of one shard, in the shard's order."""
    members: Dict[str, Dict[str, bytes]] = {}
    order: List[str] = []
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if key not in members:
                members[key] = {}
                order.append(key)
            members[key][ext] = tar.extractfile(m).read()
    return [(key, members[key]) for key in order]


def read_shard_samples(pattern: str) -> Iterator[Tuple[str, "object", str, dict]]:
    """``(key, PIL image, caption, meta)`` of every sample in the shards of a brace pattern."""
    import braceexpand

    for url in braceexpand.braceexpand(pattern):
        for key, parts in read_shard_members(url):
            data = parts.get("png") or parts.get("jpg") or parts.get("jpeg") or parts.get("webp")
            if data is None or "txt" not in parts:
                continue
            image = Image.open(io.BytesIO(data)).convert("RGB")
            meta = json.loads(parts["json"]) if "json" in parts else {}
            yield key, image, parts["txt"].decode("utf-8"), meta

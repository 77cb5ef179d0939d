"""Captioned-image sources for ``open-clip-lightclip build-shards`` and the studies.

A source yields :class:`Record` s (an image file, its caption, an optional category);
:func:`open_clip_lightclip.data.shards.build_shards` turns them into webdataset shards.

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
import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

__all__ = [
    "Record", "BuildStats", "folder_records", "csv_records", "openclipart_records", "svg_caption",
    "fashion_mnist", "clean_text",
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


def clean_text(text: str) -> str:
    """Unescape HTML entities, underscores to spaces, whitespace collapsed."""
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
        caption = clean_text(txt.read_text(encoding="utf-8", errors="replace")) if txt.is_file() else ""
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
            caption = clean_text(row.get(caption_key) or "")
            if not caption:
                if stats is not None:
                    stats.no_caption += 1
                continue
            image = Path(row[img_key] or "")
            if not image.is_absolute():
                image = path.parent / image if (path.parent / image).exists() else image
            category = clean_text(row[category_key]) if category_key and row.get(category_key) else None
            yield Record(f"{i:08d}", image, caption, category)


def svg_caption(svg_path, fallback: str = "", max_keywords: int = 8) -> str:
    """A caption from an SVG's metadata: ``dc:title``, then its keywords (``dc:subject``)."""
    title, keywords = "", []
    try:
        tree = ET.parse(svg_path)
        work = tree.find(f".//{_CC}Work")
        if work is not None:
            title = clean_text(work.findtext(f"{_DC}title") or "")
            subject = work.find(f"{_DC}subject")
            if subject is not None:
                keywords = [li.text for li in subject.iter(f"{_RDF}li")]
    except (ET.ParseError, OSError, ValueError):
        pass
    if _JUNK_TITLE.match(title):
        title = ""
    title = title or clean_text(fallback)
    words = set(title.lower().split())
    kept: List[str] = []
    for kw in keywords:
        kw = clean_text(kw or "").lower()
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
    return clean_text(re.sub(r"[_\-]+\d*$", "", stem).replace("-", " "))


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

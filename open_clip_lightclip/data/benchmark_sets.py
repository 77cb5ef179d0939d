"""Local datasets in clip_benchmark's webdataset layout, for ``clip_benchmark eval --dataset wds/NAME``.

The layout ``clip_benchmark.datasets.builder.build_wds_dataset`` reads (clip-benchmark 1.6.2)::

    DIR/
        classnames.txt                          # classification: one class name per line, by label
        zeroshot_classification_templates.txt   # classification: one prompt per line, with {c}
        dataset_type.txt                        # retrieval: "retrieval"
        test/
            nshards.txt                         # number of shards N
            0.tar ... N-1.tar                   # KEY.{png,jpg,jpeg,webp} + KEY.cls (label) or KEY.txt (captions)

``KEY.cls`` holds the integer label; ``KEY.txt`` holds one caption per line.
"""
import csv
import io
import re
import tarfile
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from PIL import Image

from .owned import OutputFolder
from .shards import add_tar_member

__all__ = ["DEFAULT_TEMPLATES", "IMAGE_EXTENSIONS", "write_classification", "write_retrieval",
           "classification_from_folder", "classification_from_labels", "retrieval_from_captions",
           "BenchmarkDataError"]

# A few of CLIP's ImageNet prompts (clip_benchmark formats them with ``template.format(c=name)``).
DEFAULT_TEMPLATES = (
    "a photo of a {c}.",
    "a bad photo of a {c}.",
    "a photo of the {c}.",
    "a drawing of a {c}.",
    "an image of a {c}.",
    "a {c}.",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # what clip_benchmark decodes
_CONVERTIBLE = (".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")  # written as PNG

ImageLike = Union[Image.Image, str, Path]


class BenchmarkDataError(ValueError):
    """Bad input for a benchmark dataset; the message is one line naming the file."""


def _image_bytes(image: ImageLike) -> Tuple[bytes, str]:
    """(bytes, extension) of an image clip_benchmark can decode: files are copied, others become PNG."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return buf.getvalue(), "png"
    path = Path(image)
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: no such image file")
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        data = path.read_bytes()
        try:  # copied as they are, so decoded first: clip_benchmark would fail on it mid-evaluation
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as e:  # PIL raises many kinds for undecodable bytes
            raise BenchmarkDataError(f"{path}: not a decodable image ({type(e).__name__}: {e}); "
                                     "replace or remove it") from e
        return data, ext[1:]
    try:
        with Image.open(path) as im:
            return _image_bytes(im)
    except OSError as e:
        raise BenchmarkDataError(f"{path}: not an image ({e})") from e


_TOP_FILES = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")


def _prepare(out_dir, split: str, force: bool) -> OutputFolder:
    """The output folder, checked: files build-benchmark did not write are refused (``force``: kept, never
    written over); its own earlier split is refused without ``force`` and replaced with it."""
    split_pattern = re.escape(split) + r"/(\d+\.tar|nshards\.txt)"
    folder = OutputFolder(out_dir, "build-benchmark", force=force,
                          writes=lambda f: f in _TOP_FILES or re.fullmatch(split_pattern, f) is not None)
    try:
        folder.check()
    except FileExistsError as e:
        raise BenchmarkDataError(str(e)) from e
    split_dir = folder.path / split
    if folder.own_files(split_pattern) and not force:
        raise BenchmarkDataError(f"{split_dir}: build-benchmark wrote this split before; choose another folder "
                                 "or pass --force to replace it")
    folder.remove_own(split_pattern)
    split_dir.mkdir(parents=True, exist_ok=True)
    return folder


def _write_tars(folder: OutputFolder, split: str, samples: Iterable[Tuple[ImageLike, str, bytes]],
                samples_per_shard: int) -> int:
    """Write (image, member suffix, payload) samples to 0.tar, 1.tar, ...; return the sample count."""
    split_dir = folder.path / split
    tar, count, shards, total, mtime = None, 0, 0, 0, time.time()
    for image, suffix, payload in samples:
        if tar is None or count == samples_per_shard:
            if tar is not None:
                tar.close()
            tar, count = tarfile.open(folder.claim(split_dir / f"{shards}.tar"), "w"), 0
            shards += 1
        data, ext = _image_bytes(image)
        key = f"s{total:07d}"
        add_tar_member(tar, f"{key}.{ext}", data, mtime)
        add_tar_member(tar, f"{key}.{suffix}", payload, mtime)
        count += 1
        total += 1
    if tar is not None:
        tar.close()
    if total == 0:
        raise BenchmarkDataError(f"{split_dir}: no samples to write")
    folder.claim(split_dir / "nshards.txt").write_text(f"{shards}\n")
    return total


def write_classification(
        out_dir,
        samples: Iterable[Tuple[ImageLike, int]],
        classnames: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        split: str = "test",
        samples_per_shard: int = 10_000,
        force: bool = False,
) -> int:
    """Write ``(image, label)`` samples (label indexes ``classnames``) for zero-shot classification."""
    if not classnames:
        raise BenchmarkDataError(f"{out_dir}: no class names")
    bad = [t for t in templates if "{c}" not in t]
    if not templates or bad:
        raise BenchmarkDataError(f"{out_dir}: every template needs '{{c}}' for the class name (got {bad[:1] or 'none'})")
    folder = _prepare(out_dir, split, force)

    def _checked():
        for image, label in samples:
            if not 0 <= int(label) < len(classnames):
                raise BenchmarkDataError(f"{image}: label {label} outside 0..{len(classnames) - 1}")
            yield image, "cls", str(int(label)).encode()

    total = _write_tars(folder, split, _checked(), samples_per_shard)
    folder.claim(folder.path / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames))
    folder.claim(folder.path / "zeroshot_classification_templates.txt").write_text(
        "".join(f"{t}\n" for t in templates))
    folder.remove_own("dataset_type.txt")  # a retrieval dataset written here before
    return total


def write_retrieval(
        out_dir,
        samples: Iterable[Tuple[ImageLike, Sequence[str]]],
        split: str = "test",
        samples_per_shard: int = 10_000,
        force: bool = False,
) -> int:
    """Write ``(image, [caption, ...])`` samples for zero-shot image-text retrieval."""
    folder = _prepare(out_dir, split, force)

    def _checked():
        for image, captions in samples:
            captions = [captions] if isinstance(captions, str) else list(captions)
            captions = [" ".join(c.split()) for c in captions if c.strip()]
            if not captions:
                raise BenchmarkDataError(f"{image}: no caption")
            yield image, "txt", "\n".join(captions).encode("utf-8")

    total = _write_tars(folder, split, _checked(), samples_per_shard)
    folder.claim(folder.path / "dataset_type.txt").write_text("retrieval\n")
    return total


def _images_under(folder: Path) -> List[Path]:
    exts = IMAGE_EXTENSIONS + _CONVERTIBLE
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _clean_class(name: str) -> str:
    return " ".join(name.replace("_", " ").split())


def classification_from_folder(folder) -> Tuple[List[Tuple[Path, int]], List[str]]:
    """``folder/CLASS/*.png`` (torchvision ``ImageFolder`` layout): samples and class names
    (sorted folder names, ``_`` read as a space)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkDataError(f"{folder}: no such folder")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and _images_under(p))
    if not classes:
        raise BenchmarkDataError(f"{folder}: no class subfolders with images (expected {folder}/CLASS/IMAGE.png; "
                                 "or pass --labels)")
    samples = [(path, label) for label, name in enumerate(classes) for path in _images_under(folder / name)]
    return samples, [_clean_class(c) for c in classes]


def _read_pairs(table) -> Iterator[Tuple[int, str, str]]:
    """(line number, image path, text) rows of a TSV (``path<TAB>text``) or CSV (``path,text``) file."""
    table = Path(table)
    if not table.is_file():
        raise BenchmarkDataError(f"{table}: no such file")
    with table.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="," if table.suffix.lower() == ".csv" else "\t")
        for lineno, row in enumerate(reader, 1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise BenchmarkDataError(f"{table}:{lineno}: expected 'IMAGE<TAB>TEXT', got {row[0]!r}")
            yield lineno, row[0].strip(), ",".join(row[1:]).strip() if table.suffix.lower() == ".csv" \
                else "\t".join(row[1:]).strip()


def _resolve(folder: Path, table: Path, lineno: int, name: str) -> Path:
    path = Path(name) if Path(name).is_absolute() else folder / name
    if not path.is_file():
        raise BenchmarkDataError(f"{table}:{lineno}: image {path} not found")
    return path


def classification_from_labels(folder, labels, classnames: Optional[Sequence[str]] = None
                               ) -> Tuple[List[Tuple[Path, int]], List[str]]:
    """Images listed in ``labels`` (``path<TAB>class``, paths relative to ``folder``). Class names:
    ``classnames`` if given (their order defines the labels), else the sorted distinct classes.
    A class given as an integer indexes ``classnames``."""
    folder, labels = Path(folder), Path(labels)
    rows = [(lineno, _resolve(folder, labels, lineno, name), cls) for lineno, name, cls in _read_pairs(labels)]
    if not rows:
        raise BenchmarkDataError(f"{labels}: no rows")
    if classnames is None:
        classnames = sorted({cls for _, _, cls in rows})
    names = [_clean_class(c) for c in classnames]
    index = {c: i for i, c in enumerate(classnames)}
    index.update({n: i for i, n in enumerate(names)})
    samples = []
    for lineno, path, cls in rows:
        if cls in index:
            samples.append((path, index[cls]))
        elif cls.isdigit() and int(cls) < len(names):
            samples.append((path, int(cls)))
        else:
            raise BenchmarkDataError(f"{labels}:{lineno}: class {cls!r} is not one of the class names")
    return samples, names


def retrieval_from_captions(folder, captions) -> List[Tuple[Path, List[str]]]:
    """Images and captions from ``captions`` (``path<TAB>caption``; a path on several rows has
    several captions), paths relative to ``folder``."""
    folder, captions = Path(folder), Path(captions)
    by_image = {}
    for lineno, name, caption in _read_pairs(captions):
        by_image.setdefault(_resolve(folder, captions, lineno, name), []).append(caption)
    if not by_image:
        raise BenchmarkDataError(f"{captions}: no rows")
    return list(by_image.items())

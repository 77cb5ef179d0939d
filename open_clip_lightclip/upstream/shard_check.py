"""Webdataset shards the trainer reads: a pre-flight check after parsing, and skip-and-count while training.

Upstream's pipeline (``open_clip_train.data.get_wds_dataset``) hands every webdataset error to
``log_and_continue`` and repeats its shard list ``sys.maxsize`` times (``with_epoch``; with
``--dataset-resampled`` it draws shards forever): a ``--train-data`` that names no file, or shards that are
not tars, log "Handling webdataset error ... Ignoring" in an endless loop and never train a step.

* :func:`check_data_args` (run on the trainer's parsed flags, before the run folder is made): every local
  shard of ``--train-data`` / ``--val-data`` exists, the first one opens as a tar and holds a sample with
  the image and text members the trainer reads, and that image decodes; otherwise a one-line
  :class:`DataError`. Remote shards (``pipe:``, ``s3://``, ...) are left to upstream.
* :func:`install_guard` (on ``open_clip_train.data``): a faulty member or shard is skipped and counted (the
  first warning of each kind logged, repeats collapsed, one summary line per pass over the data), and a
  pass (or, resampled, a draw of every shard) that yields no sample stops with a :class:`DataError`.
"""
import argparse
import io
import logging
import os
import re
import sys
import tarfile
from typing import Callable, Iterable, Iterator, List, Optional

__all__ = ["DataError", "shard_urls", "check_shards", "check_data_args", "install_guard", "parsed_by_the_trainer"]

IMAGE_EXTS = ("jpg", "png", "jpeg", "webp")  # upstream's filter_no_caption_or_no_image / rename
TEXT_EXT = "txt"
_SCAN_MEMBERS = 1000  # members of the first shard read before giving up on finding a sample


class DataError(ValueError):
    """Training data the trainer cannot read (one line: the shard and what is wrong with it)."""


def parsed_by_the_trainer() -> bool:
    """True while the trainer's ``main()`` (``python -m open_clip_train.main``) parses its flags: the data of that
    run is checked, not that of flags parsed elsewhere (a study's planned runs, tests, benchmarks)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.replace(os.sep, "/").endswith("open_clip_train/main.py"):
            return True
        frame = frame.f_back
    return False


def shard_urls(spec: str) -> List[str]:
    """The shards a ``--train-data`` value names: ``::``-separated parts, each brace-expanded (as upstream)."""
    import braceexpand

    return [url for part in spec.split("::") for url in braceexpand.braceexpand(part)]


def _local_path(url: str) -> Optional[str]:
    """The file a shard URL names, or None for a remote one (``pipe:``, ``s3://``, ``http://``, ...)."""
    if url.startswith("file://"):
        return url[len("file://"):]
    if url.startswith("file:"):
        return url[len("file:"):]
    if url.startswith("pipe:") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        return None
    return url


def _split_key(name: str):
    """webdataset's ``base_plus_ext``: ``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``)."""
    m = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (m.group(1), m.group(2).lower()) if m else (None, None)


def _first_sample_problem(path: str) -> Optional[str]:
    """What is wrong with the shard at ``path`` for the trainer, or None when its first sample reads."""
    try:
        stream = tarfile.open(path, mode="r|*")
    except (tarfile.ReadError, tarfile.CompressionError, EOFError) as e:
        return f"not a tar file ({e})"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    seen_exts, sample, count = set(), {}, 0
    try:
        with stream:
            for info in stream:
                count += 1
                if count > _SCAN_MEMBERS:
                    break
                if not info.isreg():
                    continue
                key, ext = _split_key(info.name)
                if key is None or re.match(r"__[^/]*__($|/)", info.name):
                    continue
                seen_exts.add(ext)
                if sample.get("__key__") != key:
                    sample = {"__key__": key}
                if ext in IMAGE_EXTS or ext == TEXT_EXT:
                    sample[ext] = stream.extractfile(info).read()
                image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
                if image is not None and TEXT_EXT in sample:
                    return _image_problem(image, f"{key}.{next(e for e in IMAGE_EXTS if e in sample)}")
    except (tarfile.TarError, EOFError, OSError) as e:
        if count <= 1:
            return f"not a tar file ({e})"
        return f"truncated or corrupt after {count - 1} member(s) and before its first sample ({e})"
    where = f"its first {_SCAN_MEMBERS} members" if count > _SCAN_MEMBERS else f"its {count} member(s)"
    found = ", ".join(f".{e}" for e in sorted(seen_exts)) or "none"
    return (f"no sample with an image ({', '.join('.' + e for e in IMAGE_EXTS)}) and a text (.{TEXT_EXT}) member "
            f"of the same key in {where} (extensions found: {found})")


def _image_problem(data: bytes, name: str) -> Optional[str]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB")
    except Exception as e:  # PIL raises many kinds for undecodable bytes
        return f"its first sample's image {name} does not decode ({type(e).__name__}: {e})"
    return None


def check_shards(spec: str, flag: str = "--train-data") -> Optional[str]:
    """One line naming the first bad shard of ``spec`` and what is wrong, or None when the data looks readable.

    Every local shard must exist; the first one must open as a tar holding a sample (image + text) whose
    image decodes. Remote shards are not opened."""
    try:
        urls = shard_urls(spec)
    except Exception as e:  # an unbalanced brace pattern
        return f"{flag} {spec!r}: cannot expand the pattern ({e})"
    local = [(url, _local_path(url)) for url in urls]
    local = [(url, path) for url, path in local if path is not None]
    if not local:
        return None
    missing = [url for url, path in local if not os.path.isfile(path)]
    if missing:
        url = missing[0]
        path = _local_path(url)
        if os.path.isdir(path):
            what = "is a folder, not a shard: name the .tar files in it, e.g. '" + os.path.join(path, "{00000..00009}.tar'")
        elif len(missing) == len(local):
            what = (f"no such file, nor any of the {len(local)} shard(s) the value names: "
                    "check the folder and the {a..b} range")
        else:
            what = f"no such file ({len(missing)} of the {len(local)} shards the value names are missing)"
        return f"{flag}: {url}: {what}"
    url, path = local[0]
    problem = _first_sample_problem(path)
    return f"{flag}: {url}: {problem}" if problem else None


def _ends_cleanly(url: str) -> bool:
    """False for a local uncompressed tar cut off before its end-of-archive blocks (Python's tarfile reads such a
    file to the cut without an error when it falls on a block boundary)."""
    path = _local_path(url)
    if path is None or not path.endswith(".tar"):
        return True
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size % 512:
                return False
            f.seek(max(0, size - 1024))
            return size >= 1024 and not f.read(1024).strip(b"\0")
    except OSError:
        return True  # unreadable files are reported by the reading stages


def _is_webdataset(spec: Optional[str], dataset_type: str) -> bool:
    """Whether upstream's ``get_dataset_fn`` reads ``spec`` with its webdataset pipeline."""
    if not spec:
        return False
    return dataset_type == "webdataset" or (dataset_type == "auto" and spec.split(".")[-1] == "tar")


def check_data_args(args: argparse.Namespace) -> None:
    """Raise a one-line :class:`DataError` for ``--train-data`` / ``--val-data`` shards the trainer cannot read."""
    for flag, spec in (("--train-data", getattr(args, "train_data", None)),
                       ("--val-data", getattr(args, "val_data", None))):
        if _is_webdataset(spec, getattr(args, "dataset_type", "auto")):
            problem = check_shards(spec, flag)
            if problem:
                raise DataError(problem)


# --- while training ------------------------------------------------------------------------------------
class SkipCounter:
    """The pipeline's exception handler (upstream's ``log_and_continue``): logs the first warning of each kind
    (repeats collapsed) and counts every skip in memory shared with the DataLoader workers."""

    def __init__(self):
        import multiprocessing

        self.counts = multiprocessing.Array("q", 2)  # [unreadable members, shards cut short]
        self.shard = None  # the shard being read (set by the shard reader stage)
        self.shard_errors = 0  # errors while reading self.shard
        self.seen = set()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["seen"] = set()
        return state

    def count(self, n: int = 1, shard_level: bool = False) -> None:
        with self.counts.get_lock():
            self.counts[int(shard_level)] += n

    def __call__(self, exn: BaseException, shard_level: bool = False) -> bool:
        self.count(shard_level=shard_level)
        message = str(exn.args[0]) if exn.args else ""
        key = (type(exn).__name__, re.sub(r"0x[0-9a-fA-F]+|\d+", "N", message.split(" @ ")[0])[:200])
        if key not in self.seen:
            self.seen.add(key)
            where = f" in {self.shard}" if self.shard and self.shard not in message else ""
            logging.warning(f"Handling webdataset error ({type(exn).__name__}: {message[:300]}){where}. Ignoring "
                            "(skipped and counted; repeats of this warning are not logged)")
        return True

    def shard_handler(self, exn: BaseException) -> bool:
        """The handler of the shard reading stages: an error there cuts the shard short."""
        self.shard_errors += 1
        return self(exn, shard_level=True)

    def take(self):
        """(unreadable members, shards cut short) since the last call."""
        with self.counts.get_lock():
            members, shards = self.counts[0], self.counts[1]
            self.counts[0] = self.counts[1] = 0
        return members, shards


class ShardReader:
    """Stands in for upstream's ``tarfile_to_samples_nothrow`` stage: the same samples, read shard by shard, so
    that a pass (or, with ``--dataset-resampled``, a draw of every shard) that yields no sample stops with a
    :class:`DataError` instead of repeating forever."""

    def __init__(self, upstream_stage: Callable, handler: SkipCounter, urls: List[str], resampled: bool, flag: str):
        self.upstream_stage, self.handler, self.flag = upstream_stage, handler, flag
        self.urls, self.resampled = sorted(set(urls)), resampled

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        yielded, empty = 0, set()
        for shard in src:
            url = shard["url"]
            self.handler.shard, self.handler.shard_errors, n, incomplete = url, 0, 0, 0
            for sample in self.upstream_stage(iter([shard]), handler=self.handler.shard_handler):
                if TEXT_EXT in sample and any(e in sample for e in IMAGE_EXTS):
                    n += 1
                else:
                    incomplete += 1
                yield sample
            self.handler.shard = None
            cut = self.handler.shard_errors > 0
            if not cut and not _ends_cleanly(url):
                cut = True
                self.handler.count(shard_level=True)
            if incomplete:
                self.handler.count(incomplete)
            if (cut or incomplete) and ("shard", url) not in self.handler.seen:
                self.handler.seen.add(("shard", url))  # once per shard and process: the summary counts repeats
                what = "is unreadable, truncated or corrupt" if cut else "holds samples without an image or a text"
                logging.warning(f"webdataset: shard {url} {what}: {n} sample(s) read from it, {incomplete} "
                                f"incomplete sample(s){' and the rest' if cut else ''} skipped")
            yielded += n
            if n:
                empty.clear()
            else:
                empty.add(url)
                if self.resampled and len(empty) >= len(self.urls):
                    raise DataError(f"{self.flag}: none of its {len(self.urls)} shard(s) holds a readable sample "
                                    "(see the webdataset warnings above); check the shards")
        if not yielded:
            first = f" ({sorted(empty)[0]}{', ...' if len(empty) > 1 else ''})" if empty else ""
            raise DataError(f"{self.flag}: a whole pass over {len(empty)} of its shard(s){first} gave no readable "
                            "sample (see the webdataset warnings above); check the shards")


def _summarizing_loader(loader_cls):
    class SummarizingLoader(loader_cls):
        """upstream's ``WebLoader``, plus one line after each pass over the data saying what was skipped."""

        def __iter__(self):
            counter = getattr(self, "lightclip_skips", None)
            if counter is not None:
                counter.take()
            yield from super().__iter__()
            if counter is not None:
                members, shards = counter.take()
                if members or shards:
                    epoch = getattr(self, "lightclip_epoch", None)
                    at = f"epoch {epoch.get_value()}: " if epoch is not None else ""
                    logging.warning(f"webdataset: {at}skipped {members} unreadable or incomplete sample(s); "
                                    f"{shards} read(s) of a shard cut short by an unreadable or truncated part (the "
                                    "first warning of each kind is logged above)")

    SummarizingLoader.__name__ = SummarizingLoader.__qualname__ = loader_cls.__name__
    return SummarizingLoader


def install_guard(data) -> None:
    """Wrap ``data.get_wds_dataset`` (``open_clip_train.data``, whose ``wds`` may be a proxy module) with the
    skip counter, the shard reader and the per-pass summary."""
    if getattr(data.get_wds_dataset, "lightclip_guard", False):
        return
    upstream_get = data.get_wds_dataset
    upstream_handler = data.log_and_continue
    upstream_stage = data.tarfile_to_samples_nothrow
    upstream_loader = data.wds.WebLoader
    loader_cls = _summarizing_loader(upstream_loader)

    def get_wds_dataset(args, preprocess_img, is_train, epoch=0, floor=False, tokenizer=None):
        spec = args.train_data if is_train else args.val_data
        handler = SkipCounter()
        resampled = bool(getattr(args, "dataset_resampled", False) and is_train)
        flag = "--train-data" if is_train else "--val-data"
        urls = shard_urls(spec) if isinstance(spec, str) else list(spec)
        data.log_and_continue = handler
        data.tarfile_to_samples_nothrow = ShardReader(upstream_stage, handler, urls, resampled, flag)
        data.wds.WebLoader = loader_cls
        try:
            info = upstream_get(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        finally:
            data.log_and_continue = upstream_handler
            data.tarfile_to_samples_nothrow = upstream_stage
            data.wds.WebLoader = upstream_loader
        info.dataloader.lightclip_skips = handler
        info.dataloader.lightclip_epoch = info.shared_epoch
        return info

    get_wds_dataset.lightclip_guard = True
    get_wds_dataset.__wrapped__ = upstream_get
    data.get_wds_dataset = get_wds_dataset

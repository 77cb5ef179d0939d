"""Offline teacher embeddings (MobileCLIP's dataset reinforcement, without the augmentations): run the
teacher(s) once over webdataset shards and write new shards whose samples also carry them.

Each output sample keeps every member of the input sample and gains ``teacher.npy``: a float32
``(2, D)`` array, the unit-norm image embedding (row 0) and text embedding (row 1), with ``D`` the
teachers' widths concatenated in order. ``OUT/teacher_cache.json`` names the teachers (spec, width,
logit scale, image size), the source shards and the finished output shards, and the trainer's
``--distill-cache`` reads it beside the training shards; ``OUT/sizes.json`` gives the trainer the
shards' sample counts (as ``build-shards`` does).

What the cache gives up: the teacher sees the raw image through its own inference transform
(resize, centre crop), not the augmented view the student trains on; the online teacher judges the
student's own crop. With augmentation off the two agree.

Resumable and never overwriting: a shard is written to a temporary name and renamed when complete;
a rerun skips finished shards; an output folder holding another cache (other teachers or sources)
or files it did not write is refused.
"""
import io
from typing import Callable, List, Optional, Sequence

import numpy as np

from .derived import DerivedShards, write_shard
from .shards import read_shard_members

__all__ = ["CACHE_INFO", "TEACHER_KEY", "CacheError", "pack_sample", "cache_teacher_shards"]

CACHE_INFO = "teacher_cache.json"
TEACHER_KEY = "teacher.npy"


class CacheError(ValueError):
    """A cache that cannot be written as asked (one line)."""


def pack_sample(sample: dict):
    """The trainer's ``(image, text)`` of a decoded sample; a cached sample's text also carries its teacher
    embeddings (``models.distill_heads.pack_text``)."""
    if TEACHER_KEY not in sample:
        return sample["image"], sample["text"]
    from ..models.distill_heads import pack_text

    return sample["image"], pack_text(sample["text"], sample[TEACHER_KEY])


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32))
    return buf.getvalue()


def cache_teacher_shards(sources: Sequence[str], out: str, teachers: list, batch_size: int = 64,
                         progress: Optional[Callable[[int], None]] = None) -> dict:
    """Write ``out/<shard name>`` for every source shard with each sample's ``teacher.npy``; returns the info."""
    from PIL import Image

    desc = [{"spec": t.name, "dim": t.embed_dim, "logit_scale": t.logit_scale, "image_size": list(t.image_size)}
            for t in teachers]
    folder = DerivedShards(sources, out, CACHE_INFO, {"teachers": desc}, same=("teachers",), error=CacheError,
                           what="teacher cache")
    if progress:
        progress(sum(folder.finished.values()))
    for src, name in folder.pending():
        samples = read_shard_members(src)
        rows: List[np.ndarray] = []
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            images, captions = [], []
            for _, parts in chunk:
                data = next((parts[e] for e in ("jpg", "png", "jpeg", "webp") if e in parts), None)
                if data is None or "txt" not in parts:
                    raise CacheError(f"{src}: a sample without an image or a caption (.txt); cache shards as "
                                     "`open-clip-lightclip build-shards` writes them")
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
                captions.append(parts["txt"].decode("utf-8"))
            per_teacher = [t.embed_raw(images, captions) for t in teachers]
            image = np.concatenate([e[0].float().cpu().numpy() for e in per_teacher], axis=1)
            text = np.concatenate([e[1].float().cpu().numpy() for e in per_teacher], axis=1)
            rows.extend(np.stack([image, text], axis=1))
            if progress:
                progress(len(chunk))
        tmp = folder.temporary(name)
        count = write_shard(tmp, ((key, {**parts, TEACHER_KEY: _npy(row)}) for (key, parts), row in zip(samples, rows)))
        folder.finish(name, tmp, count)
    folder.save()
    return folder.info

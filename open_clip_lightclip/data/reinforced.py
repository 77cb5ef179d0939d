"""Reinforced shards (MobileCLIP's dataset reinforcement, Vasu et al. 2024, for any webdataset): per image,
K augmentations drawn once and stored, every teacher's embedding of each augmented view and of each
caption, and N synthetic captions from a CoCa captioner; training replays a stored augmentation exactly,
so the stored teacher embedding is that of the student's own view.

Each output sample keeps every member of the input sample and gains:

* ``paug.npy``: float32 ``(K, 14)``, the K augmentations' choices (:mod:`.augment`);
* ``syn.json``: the N synthetic captions (with a captioner);
* ``timg.npy``: ``(K, D)``, each teacher's unit-norm embedding of each view (teachers concatenated);
* ``ttxt.npy``: ``(1 + N, D)``, of the real caption (row 0) and of each synthetic caption;

embeddings in ``fp16`` (default), ``bf16`` (stored as its 16 bits, ``uint16``) or ``fp32``.
``OUT/reinforce.json`` records the teachers, the augmentation's distributions, K, the captioner and its
decoding settings, N, the storage type, the seed, the bytes each sample gained, and the finished shards;
``OUT/sizes.json`` the sample counts. Every draw (the augmentations, the captions) comes from generators
seeded by ``--seed``, the shard name and the sample key: a rerun writes the same shards.

Training (``--distill-reinforced``) draws, per sample and epoch, one stored view and one synthetic caption
as a function of ``--seed``, the epoch, the shard's file name and the sample key (:func:`draw_indices`),
replays the view at the student's size (:func:`~.augment.replay`) and packs the caption, the synthetic
caption and the matching teacher rows into the text field (:class:`ReinforcedSamples`).

The teachers see each view made at their own size from the source image (the crop box is in source pixels);
the student sees the same box at its size. With equal sizes, means and stds the two inputs are the same
tensor, and training from the shards equals online distillation on the replayed views.
"""
import hashlib
import io
import json
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .augment import PARAM_WIDTH, AugmentSpec, draw_params, replay
from .derived import DerivedShards, write_shard
from .shards import read_shard_members

__all__ = ["REINFORCE_INFO", "MEMBERS", "DTYPES", "ReinforceError", "sample_seed", "draw_indices",
           "reinforce_shard", "reinforce_shards", "read_info", "decode_embeddings", "ReinforcedSamples"]

REINFORCE_INFO = "reinforce.json"
MEMBERS = {"params": "paug.npy", "synthetic": "syn.json", "image": "timg.npy", "text": "ttxt.npy"}
DTYPES = ("fp16", "bf16", "fp32")


class ReinforceError(ValueError):
    """Shards that cannot be reinforced or trained from as asked (one line)."""


def sample_seed(*parts) -> int:
    """A 60-bit seed from the parts' text (the same on every machine and process)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def draw_indices(seed: int, epoch: int, key: str, views: int, synthetic: int, shard: str = ""):
    """The stored view and synthetic caption a sample trains with in an epoch: a function of the run's seed, the
    epoch, the sample's key and its shard's file name only (the same on every rank, worker and rerun, and after
    ``--resume``; keys repeated in other shards draw apart)."""
    h = sample_seed("reinforced-draw", seed, epoch, shard, key)
    return h % views, (h // views) % synthetic if synthetic else 0


def _encode(array: np.ndarray, dtype: str) -> bytes:
    array = np.asarray(array, dtype=np.float32)
    if dtype == "fp16":
        array = array.astype(np.float16)
    elif dtype == "bf16":  # the top 16 bits of fp32, rounded to nearest even
        bits = array.view(np.uint32).astype(np.uint64)
        array = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF).astype(np.uint16)
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def decode_embeddings(array: np.ndarray, dtype: str) -> np.ndarray:
    """Stored embeddings (``fp16`` / ``bf16`` bits / ``fp32``) as float32."""
    if dtype == "bf16":
        return (np.asarray(array, dtype=np.uint32) << 16).view(np.float32)
    return np.asarray(array, dtype=np.float32)


def _image_and_caption(src: str, parts: dict):
    from PIL import Image

    data = next((parts[e] for e in ("jpg", "png", "jpeg", "webp") if e in parts), None)
    if data is None or "txt" not in parts:
        raise ReinforceError(f"{src}: a sample without an image or a caption (.txt); reinforce shards as "
                             "`open-clip-lightclip build-shards` writes them")
    return Image.open(io.BytesIO(data)).convert("RGB"), parts["txt"].decode("utf-8")


def reinforce_shard(src: str, name: str, tmp, teachers: list, spec: AugmentSpec, views: int, captioner=None,
                    synthetic: int = 0, decode=None, dtype: str = "fp16", seed: int = 0, batch_size: int = 32,
                    progress: Optional[Callable[[int], None]] = None):
    """Write the reinforced copy of one shard to ``tmp``; returns ``(samples, bytes added)``."""
    samples = read_shard_members(src)
    added = []
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        loaded = [_image_and_caption(src, parts) for _, parts in chunk]
        params = [np.stack([draw_params(spec, image, sample_seed("view", seed, name, key, k)) for k in range(views)])
                  for (key, _), (image, _) in zip(chunk, loaded)]
        captions: List[List[str]] = [[] for _ in chunk]
        if captioner is not None and synthetic:
            gens = [torch.Generator().manual_seed(sample_seed("captions", seed, name, key)) for key, _ in chunk]
            captions = captioner.caption([image for image, _ in loaded], synthetic, gens, decode)
        image_rows, text_rows = [], []
        for t in teachers:
            views_t = torch.stack([replay(image, p, t.image_size, t.mean, t.std)
                                   for (image, _), ps in zip(loaded, params) for p in ps])
            image_rows.append(t.embed_views(views_t).float().cpu().numpy().reshape(len(chunk), views, -1))
            texts = [c for (_, caption), syn in zip(loaded, captions) for c in [caption, *syn]]
            text_rows.append(t.embed_captions(texts).float().cpu().numpy().reshape(len(chunk), 1 + len(captions[0]), -1))
        for j, (key, parts) in enumerate(chunk):
            extra = {MEMBERS["params"]: _encode(params[j], "fp32")}
            if captioner is not None and synthetic:
                extra[MEMBERS["synthetic"]] = json.dumps(captions[j]).encode()
            if teachers:
                extra[MEMBERS["image"]] = _encode(np.concatenate([r[j] for r in image_rows], axis=1), dtype)
                extra[MEMBERS["text"]] = _encode(np.concatenate([r[j] for r in text_rows], axis=1), dtype)
            added.append(sum(len(v) for v in extra.values()))
            out.append((key, {**parts, **extra}))
        if progress:
            progress(len(chunk))
    return write_shard(tmp, out), sum(added)


def reinforce_shards(sources: Sequence[str], out: str, teachers: list, spec: AugmentSpec, views: int,
                     captioner=None, synthetic: int = 0, decode=None, dtype: str = "fp16", seed: int = 0,
                     batch_size: int = 32, progress: Optional[Callable[[int], None]] = None,
                     map_shards: Optional[Callable] = None, precision: str = "fp32") -> dict:
    """Reinforce every source shard into ``out`` (module docstring); returns the description. ``map_shards``
    (``(fn, jobs) -> iterator of results``) runs shards elsewhere (worker processes)."""
    if dtype not in DTYPES:
        raise ReinforceError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if views < 1:
        raise ReinforceError(f"--views must be >= 1, got {views}")
    if synthetic and captioner is None:
        raise ReinforceError("--synthetic needs --captioner (a CoCa model)")
    info = {"format": 1, "views": views, "augment": spec.to_dict(), "param_width": PARAM_WIDTH,
            "teachers": [{"spec": t.name, "dim": t.embed_dim, "logit_scale": t.logit_scale,
                          "image_size": list(t.image_size)} for t in teachers],
            "captioner": None if captioner is None or not synthetic else
            {"spec": captioner.name, "decoding": (decode.to_dict() if decode else None)},
            "synthetic": synthetic if captioner is not None else 0, "dtype": dtype, "seed": seed,
            "precision": precision}
    folder = DerivedShards(sources, out, REINFORCE_INFO, info,
                           same=("views", "augment", "teachers", "captioner", "synthetic", "dtype", "seed",
                                 "precision"),
                           error=ReinforceError, what="reinforcement")
    if progress:
        progress(sum(folder.finished.values()))
    jobs = [(src, name, folder.temporary(name)) for src, name in folder.pending()]
    kwargs = dict(teachers=teachers, spec=spec, views=views, captioner=captioner, synthetic=synthetic,
                  decode=decode, dtype=dtype, seed=seed, batch_size=batch_size)
    if map_shards is None:
        results = (reinforce_shard(src, name, tmp, progress=progress, **kwargs) for src, name, tmp in jobs)
    else:
        results = map_shards(jobs)
    for (src, name, tmp), (count, added) in zip(jobs, results):
        folder.finish(name, tmp, count, bytes_added=added)
    added = folder.info.get("bytes_added", {})
    total = sum(folder.finished.values())
    folder.info["bytes_per_sample"] = round(sum(added.values()) / total, 1) if total else 0.0
    folder.save()
    return folder.info


def read_info(train_data: Optional[str]) -> dict:
    """``reinforce.json`` beside the training shards: every folder's, all made alike (views, storage, teachers,
    synthetic captions)."""
    from .derived import read_description

    return read_description(train_data, REINFORCE_INFO, ("format", "param_width", "views", "dtype", "teachers",
                                                         "synthetic"),
                            ReinforceError, "--distill-reinforced", "reinforce")


class ReinforcedSamples:
    """The trainer's ``to_tuple("image", "text")`` stage for reinforced shards: per sample, the drawn stored view
    replayed at the student's ``size`` / ``mean`` / ``std`` and the text field packed with the caption's tokens,
    the drawn synthetic caption's tokens (``synthetic``) and the matching teacher rows (``cached``: view, caption,
    synthetic caption). ``epoch`` is read from ``shared_epoch`` (set once the trainer's loader exists)."""

    def __init__(self, tokenize: Callable, size, mean, std, seed: int, info: dict, cached: bool, synthetic: bool):
        self.tokenize, self.size, self.mean, self.std, self.seed = tokenize, tuple(size), mean, std, seed
        self.views, self.num_synthetic, self.dtype = info["views"], info.get("synthetic", 0), info["dtype"]
        self.cached, self.synthetic = cached, synthetic
        self.shared_epoch = None

    def _epoch(self) -> int:
        return 0 if self.shared_epoch is None else int(self.shared_epoch.get_value())

    def sample(self, sample: dict, epoch: int):
        from ..models.distill_heads import pack_text

        key = sample["__key__"]
        missing = [m for m, on in ((MEMBERS["params"], True), (MEMBERS["synthetic"], self.synthetic),
                                   (MEMBERS["image"], self.cached)) if on and m not in sample]
        if missing:
            raise ReinforceError(f"sample {key} has no {missing[0]}: train with shards `open-clip-lightclip reinforce` "
                                 "wrote (with --captioner for synthetic captions, --teacher for cached embeddings)")
        shard = str(sample.get("__url__", "")).replace("\\", "/").rsplit("/", 1)[-1]
        k, j = draw_indices(self.seed, epoch, key, self.views, self.num_synthetic, shard)
        image = replay(sample["image"], sample[MEMBERS["params"]][k], self.size, self.mean, self.std)
        syn = self.tokenize(sample[MEMBERS["synthetic"]][j]) if self.synthetic else None
        rows = None
        if self.cached:
            timg = decode_embeddings(sample[MEMBERS["image"]], self.dtype)
            ttxt = decode_embeddings(sample[MEMBERS["text"]], self.dtype)
            rows = np.stack([timg[k], ttxt[0]] + ([ttxt[1 + j]] if self.synthetic else []))
        return image, pack_text(sample["text"], rows, syn)

    def __call__(self, src):
        epoch = self._epoch()
        for sample in src:
            yield self.sample(sample, epoch)

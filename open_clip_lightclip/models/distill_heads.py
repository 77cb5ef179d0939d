"""Distillation on the student model: a training-only projector and the forward hooks that add the
teachers' embeddings to ``model_out``.

:func:`attach_distillation` registers two hooks on the student (any OpenCLIP model class):

* a forward pre-hook that unpacks texts carrying cached teacher embeddings and synthetic captions
  (:func:`pack_text`, from ``cache-teacher`` / ``reinforce`` shards through the trainer's own loader) back
  into token ids;
* a forward hook that, in training mode, adds per teacher ``k`` the teacher's unit-norm embeddings
  (``distill_t{k}_image_features`` / ``_text_features``: from the cache, or from the frozen
  teachers run on the batch) and the student's projected ones (``distill_p{k}_*``) to the output;
  with synthetic captions (``reinforce`` shards) also the student's embedding of each sample's
  synthetic caption (``synthetic_text_features``) and the teachers' (``synthetic_distill_t{k}_*``).

Teacher outputs are computed inside the model's forward, so they follow the student's batch through
``--accum-freq`` (a small cache keyed by the input tensors: the teacher runs once per sample, not
again in the gradient pass) and DDP. The teachers are held outside the module tree: not in the
state dict, the optimizer or DDP, never switched to training mode.
"""
import weakref
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .numerics import reads_values

__all__ = ["PROJECTOR_MODULE_NAME", "DistillProjector", "pack_text", "unpack_texts", "attach_distillation",
           "student_embed_dim"]

PROJECTOR_MODULE_NAME = "distill_projector"  # listed in registry.TRAINING_ONLY_MODULES


class DistillProjector(nn.Module):
    """Per teacher, a linear map of the student's image and text embeddings to the teacher's width
    (CLIP-KD's feature-distillation projector); identity for a teacher of the student's width."""

    def __init__(self, student_dim: int, teacher_dims: Sequence[int]):
        super().__init__()
        self.maps = nn.ModuleList(
            nn.ModuleDict({"image": nn.Linear(student_dim, d, bias=False), "text": nn.Linear(student_dim, d, bias=False)})
            if d != student_dim else nn.ModuleDict() for d in teacher_dims)

    def forward(self, k: int, image: torch.Tensor, text: torch.Tensor):
        maps = self.maps[k]
        if not len(maps):
            return image, text
        return maps["image"](image), maps["text"](text)


def pack_text(tokens: torch.Tensor, teacher=None, synthetic: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One sample's token ids (L,), optionally a synthetic caption's token ids (L,) and cached teacher embeddings
    (R, D: image row, text row[, synthetic caption's text row]) as one float64 vector
    ``[L, tokens, synthetic tokens, teacher rows]`` (exact: ids < 2^53, fp32 embeddings)."""
    parts = [torch.tensor([tokens.shape[0]], dtype=torch.float64), tokens.to(torch.float64)]
    if synthetic is not None:
        parts.append(synthetic.to(torch.float64))
    if teacher is not None:
        parts.append(torch.as_tensor(teacher, dtype=torch.float64).reshape(-1))
    return torch.cat(parts)


def unpack_texts(texts: torch.Tensor, dims: Sequence[int], synthetic: bool = False):
    """A batch of :func:`pack_text` vectors -> token ids (B, L), the synthetic captions' ids (B, L) or None, and per
    teacher of ``dims`` its (image, text[, synthetic text]) embeddings. ``L`` follows from the width and ``dims`` (no
    value is read: no host sync); the stored ``L`` is checked where reading it is free (CPU tensors)."""
    total, captions = sum(dims), 2 if synthetic else 1
    rows = (captions + 1) if dims else 0
    length = (texts.shape[1] - 1 - rows * total) // captions
    stored = int(texts[0, 0]) if reads_values(texts) else length
    if length < 1 or stored != length or 1 + captions * length + rows * total != texts.shape[1]:
        if not synthetic and not dims:
            raise ValueError("the training batch carries packed captions this run did not ask for")
        cached = f"{(texts.shape[1] - 1 - captions * stored) // max(rows, 1)}" if stored > 0 else "other"
        raise ValueError(f"the cached teacher embeddings have {cached} dimensions, this run expects "
                         f"{total}: train with the shards and the description (teacher_cache.json / reinforce.json) "
                         "written with them")
    tokens = texts[:, 1:1 + length].round().long()
    syn = texts[:, 1 + length:1 + 2 * length].round().long() if synthetic else None
    rest = texts[:, 1 + captions * length:].float()
    out, start = [], 0
    for d in dims:
        out.append(tuple(rest[:, r * total + start:r * total + start + d] for r in range(rows)))
        start += d
    return tokens, syn, out


def student_embed_dim(model: nn.Module, tokenizer) -> int:
    """The width of the model's embeddings (one caption through ``encode_text``)."""
    with torch.no_grad():
        return int(model.encode_text(tokenizer(["a"]).to(next(model.parameters()).device)).shape[-1])


class _TeacherOutputs:
    """The forward hooks (see the module docstring). ``teachers``: online teachers, or None with ``dims`` for cached
    embeddings (carried by the batch); ``synthetic``: the batch also carries a synthetic caption per sample
    (``reinforce`` shards), whose student embedding (and teacher embeddings) join the output as ``synthetic_*``."""

    def __init__(self, teachers: Optional[List[nn.Module]], dims: Sequence[int], student_tokenizer,
                 projector: Optional[DistillProjector], synthetic: bool = False, recent: int = 16):
        self.teachers, self.dims, self.tokenizer, self.projector = teachers, list(dims), student_tokenizer, projector
        self.synthetic = synthetic
        # teacher embeddings of the latest input tensors, by identity (weak references: a freed batch's memory
        # reused by the next batch is never mistaken for it); --accum-freq feeds the same tensors twice
        self.recent: List[tuple] = []
        self.max_recent = recent
        self.unpacked = None

    def pre_hook(self, module, args, kwargs):
        images, texts = (list(args) + [None, None])[:2]
        texts = kwargs.get("text", texts)
        self.unpacked = None
        if texts is not None and texts.is_floating_point():  # packed: tokens (+ synthetic captions, teacher rows)
            tokens, synthetic, embeddings = unpack_texts(texts, self.dims if self.teachers is None else [],
                                                         self.synthetic)
            self.unpacked = (embeddings, synthetic, texts)
            if "text" in kwargs:
                kwargs = dict(kwargs, text=tokens)
            else:
                args = (args[0], tokens, *args[2:])
        return args, kwargs

    def _teacher_embeddings(self, module, images, texts, synthetic=None):
        """Per teacher (image, text[, synthetic text]) embeddings: the batch's cached rows, or the online teachers'."""
        if self.teachers is None:
            if self.unpacked is None:
                raise ValueError("--distill-cache / --distill-reinforced: the training batch carries no teacher "
                                 "embeddings; train on the shards `open-clip-lightclip cache-teacher` or "
                                 "`reinforce` wrote (webdataset)")
            return self.unpacked[0]
        key_text = texts if self.unpacked is None else self.unpacked[2]  # the packed tensor: the same in both passes
        self.recent = [entry for entry in self.recent if entry[0]() is not None and entry[1]() is not None]
        for image_ref, text_ref, embeddings in self.recent:
            if image_ref() is images and text_ref() is key_text:
                return embeddings
        cfg = getattr(module.visual, "preprocess_cfg", {}) or {}
        mean, std = cfg.get("mean", OPENAI_DATASET_MEAN), cfg.get("std", OPENAI_DATASET_STD)
        embeddings = [t.embed_student_batch(images, texts, self.tokenizer, mean, std) for t in self.teachers]
        if synthetic is not None:
            embeddings = [(*e, t.embed_student_texts(synthetic, self.tokenizer)) for e, t in zip(embeddings, self.teachers)]
        self.recent = [*self.recent, (weakref.ref(images), weakref.ref(key_text), embeddings)][-self.max_recent:]
        return embeddings

    def hook(self, module, args, kwargs, output):
        if not (module.training and isinstance(output, dict) and "image_features" in output):
            return output
        images, texts = (list(args) + [None, None])[:2]
        images, texts = kwargs.get("image", images), kwargs.get("text", texts)
        synthetic = None if self.unpacked is None else self.unpacked[1]
        if self.synthetic:
            if synthetic is None:
                raise ValueError("--distill-synthetic-weight: the training batch carries no synthetic captions; train "
                                 "on shards `open-clip-lightclip reinforce` wrote with --captioner")
            output["synthetic_text_features"] = module.encode_text(synthetic, normalize=True)
        if not self.dims:  # reinforced data without a teacher term
            return output
        embeddings = self._teacher_embeddings(module, images, texts, synthetic)
        dev = output["image_features"].device
        for k, rows in enumerate(embeddings):
            output[f"distill_t{k}_image_features"] = rows[0].to(dev)
            output[f"distill_t{k}_text_features"] = rows[1].to(dev)
            if self.synthetic:
                output[f"synthetic_distill_t{k}_text_features"] = rows[2].to(dev)
            if self.projector is not None:
                s_image, s_text = self.projector(k, output["image_features"], output["text_features"])
                output[f"distill_p{k}_image_features"] = s_image
                output[f"distill_p{k}_text_features"] = s_text
                if self.synthetic:
                    output[f"synthetic_distill_p{k}_text_features"] = self.projector(
                        k, output["image_features"], output["synthetic_text_features"])[1]
        return output


def attach_distillation(model: nn.Module, teachers: Optional[List[nn.Module]], dims: Sequence[int],
                        student_tokenizer, projector: Optional[DistillProjector] = None,
                        synthetic: bool = False) -> None:
    """Register the hooks on ``model`` (and the projector as ``model.distill_projector``). ``dims`` empty: no teacher
    (reinforced shards used for their augmentations and synthetic captions only)."""
    if projector is not None:
        setattr(model, PROJECTOR_MODULE_NAME, projector)
    outputs = _TeacherOutputs(teachers, dims, student_tokenizer, projector, synthetic)
    model.register_forward_pre_hook(outputs.pre_hook, with_kwargs=True)
    model.register_forward_hook(outputs.hook, with_kwargs=True)
    object.__setattr__(model, "_distill_outputs", outputs)  # not a submodule: teachers stay out of the state dict

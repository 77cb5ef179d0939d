"""Distillation on the student model: a training-only projector and the forward hooks that add the
teachers' embeddings to ``model_out``.

:func:`attach_distillation` registers two hooks on the student (any OpenCLIP model class):

* a forward pre-hook that unpacks texts carrying cached teacher embeddings (:func:`pack_text`,
  written by ``cache-teacher`` shards through the trainer's own loader) back into token ids;
* a forward hook that, in training mode, adds per teacher ``k`` the teacher's unit-norm embeddings
  (``distill_t{k}_image_features`` / ``_text_features``: from the cache, or from the frozen
  teachers run on the batch) and the student's projected ones (``distill_p{k}_*``) to the output.

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


def pack_text(tokens: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """One sample's token ids (L,) and cached teacher embeddings (2, D: image row, text row) as one float64
    vector ``[L, tokens, image embedding, text embedding]`` (exact: ids < 2^53, fp32 embeddings)."""
    teacher = torch.as_tensor(teacher, dtype=torch.float64)
    return torch.cat([torch.tensor([tokens.shape[0]], dtype=torch.float64), tokens.to(torch.float64),
                      teacher[0], teacher[1]])


def unpack_texts(texts: torch.Tensor, dims: Sequence[int]):
    """A batch of :func:`pack_text` vectors -> token ids (B, L) and per teacher (image, text) embeddings. ``L``
    follows from the width and ``dims`` (no value is read: no host sync); the stored ``L`` is checked where
    reading it is free (CPU tensors)."""
    total = sum(dims)
    length = texts.shape[1] - 1 - 2 * total
    stored = int(texts[0, 0]) if reads_values(texts) else length
    if length < 1 or stored != length:
        cached = f"{(texts.shape[1] - 1 - stored) // 2}" if stored != length else "other"
        raise ValueError(f"the cached teacher embeddings have {cached} dimensions, this run expects "
                         f"{total}: train with the shards and teacher_cache.json that `cache-teacher` wrote together")
    tokens = texts[:, 1:1 + length].round().long()
    rest = texts[:, 1 + length:].float()
    out, start = [], 0
    for d in dims:
        out.append((rest[:, start:start + d], rest[:, total + start:total + start + d]))
        start += d
    return tokens, out


def student_embed_dim(model: nn.Module, tokenizer) -> int:
    """The width of the model's embeddings (one caption through ``encode_text``)."""
    with torch.no_grad():
        return int(model.encode_text(tokenizer(["a"]).to(next(model.parameters()).device)).shape[-1])


class _TeacherOutputs:
    """The forward hooks (see the module docstring). ``teachers``: online teachers, or None with ``dims``
    for cached embeddings."""

    def __init__(self, teachers: Optional[List[nn.Module]], dims: Sequence[int], student_tokenizer,
                 projector: Optional[DistillProjector], recent: int = 16):
        self.teachers, self.dims, self.tokenizer, self.projector = teachers, list(dims), student_tokenizer, projector
        # teacher embeddings of the latest input tensors, by identity (weak references: a freed batch's memory
        # reused by the next batch is never mistaken for it); --accum-freq feeds the same tensors twice
        self.recent: List[tuple] = []
        self.max_recent = recent
        self.unpacked = None

    def pre_hook(self, module, args, kwargs):
        images, texts = (list(args) + [None, None])[:2]
        texts = kwargs.get("text", texts)
        self.unpacked = None
        if texts is not None and texts.is_floating_point():  # packed: tokens + cached teacher embeddings
            tokens, embeddings = unpack_texts(texts, self.dims)
            self.unpacked = (embeddings, images)
            if "text" in kwargs:
                kwargs = dict(kwargs, text=tokens)
            else:
                args = (args[0], tokens, *args[2:])
        return args, kwargs

    def _teacher_embeddings(self, module, images, texts):
        if self.unpacked is not None:
            return self.unpacked[0]
        if self.teachers is None:
            raise ValueError("--distill-cache: the training batch carries no teacher embeddings; train on the shards "
                             "`open-clip-lightclip cache-teacher` wrote (webdataset)")
        self.recent = [entry for entry in self.recent if entry[0]() is not None and entry[1]() is not None]
        for image_ref, text_ref, embeddings in self.recent:
            if image_ref() is images and text_ref() is texts:
                return embeddings
        cfg = getattr(module.visual, "preprocess_cfg", {}) or {}
        mean, std = cfg.get("mean", OPENAI_DATASET_MEAN), cfg.get("std", OPENAI_DATASET_STD)
        embeddings = [t.embed_student_batch(images, texts, self.tokenizer, mean, std) for t in self.teachers]
        self.recent = [*self.recent, (weakref.ref(images), weakref.ref(texts), embeddings)][-self.max_recent:]
        return embeddings

    def hook(self, module, args, kwargs, output):
        if not (module.training and isinstance(output, dict) and "image_features" in output):
            return output
        images, texts = (list(args) + [None, None])[:2]
        images, texts = kwargs.get("image", images), kwargs.get("text", texts)
        embeddings = self._teacher_embeddings(module, images, texts)
        dev = output["image_features"].device
        for k, (t_image, t_text) in enumerate(embeddings):
            output[f"distill_t{k}_image_features"] = t_image.to(dev)
            output[f"distill_t{k}_text_features"] = t_text.to(dev)
            if self.projector is not None:
                s_image, s_text = self.projector(k, output["image_features"], output["text_features"])
                output[f"distill_p{k}_image_features"] = s_image
                output[f"distill_p{k}_text_features"] = s_text
        return output


def attach_distillation(model: nn.Module, teachers: Optional[List[nn.Module]], dims: Sequence[int],
                        student_tokenizer, projector: Optional[DistillProjector] = None) -> None:
    """Register the hooks on ``model`` (and the projector as ``model.distill_projector``)."""
    if projector is not None:
        setattr(model, PROJECTOR_MODULE_NAME, projector)
    outputs = _TeacherOutputs(teachers, dims, student_tokenizer, projector)
    model.register_forward_pre_hook(outputs.pre_hook, with_kwargs=True)
    model.register_forward_hook(outputs.hook, with_kwargs=True)
    object.__setattr__(model, "_distill_outputs", outputs)  # not a submodule: teachers stay out of the state dict

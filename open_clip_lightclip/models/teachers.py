"""Frozen OpenCLIP teachers for distillation, each with its own tokenizer and image preparation.

A :class:`Teacher` wraps any OpenCLIP model (a config name and weights: a checkpoint path, a
pretrained tag, ``local-dir:``, ``hf-hub:``), frozen, in eval mode, run without gradient. During
training it sees the student's batch re-prepared its own way (:meth:`Teacher.embed_student_batch`):

* images: the student's augmented view, un-normalised with the student's mean / std, resized
  (bicubic, antialiased) to the teacher's size when they differ, normalised with the teacher's
  mean / std: the teacher judges the same crop the student sees, at its own resolution;
* text: the student's tokens decoded back to the caption and tokenised by the teacher's tokenizer
  (its own vocabulary and context length), unless both tokenizers are the same.

The offline cache (``cache-teacher``) runs :meth:`Teacher.embed_raw` instead: the raw image through
the teacher's own inference transform and the raw caption.
"""
import logging
import os
import pickle
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

__all__ = ["TeacherError", "parse_teacher", "check_teacher_spec", "Teacher", "build_teacher", "adapt_images", "decode_tokens",
           "same_tokenizer"]


class TeacherError(ValueError):
    """A teacher that cannot be built (one line: which teacher, what is wrong, the fix)."""


def parse_teacher(spec: str) -> Tuple[str, Optional[str]]:
    """``MODEL=WEIGHTS`` / ``MODEL`` / ``hf-hub:ORG/NAME`` / ``local-dir:PATH`` -> (model name, weights or None)."""
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    name, sep, weights = spec.partition("=")
    if not name or (sep and not weights):
        raise TeacherError(f"teacher {spec!r}: write MODEL=WEIGHTS (e.g. ViT-B-32=openai or "
                           "LightCLIP-MNv3=logs/run/checkpoints/epoch_32.pt), hf-hub:ORG/NAME or local-dir:PATH")
    return name, weights or None


def adapt_images(images: torch.Tensor, src_mean: Sequence[float], src_std: Sequence[float], size: Tuple[int, int],
                 mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Images normalised one way (``src_mean`` / ``src_std``) -> resized to ``size`` and normalised another way."""
    if tuple(src_mean) == tuple(mean) and tuple(src_std) == tuple(std) and tuple(images.shape[-2:]) == tuple(size):
        return images
    def column(values):  # host values, staged to the device without waiting for it
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(images.device, non_blocking=True)

    x = images.float() * column(src_std) + column(src_mean)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    x = (x - column(mean)) / column(std)
    return x.to(images.dtype)


def same_tokenizer(a, b) -> bool:
    """True when two OpenCLIP tokenizers turn every caption into the same tokens."""
    if type(a) is not type(b) or getattr(a, "context_length", None) != getattr(b, "context_length", None):
        return False
    if hasattr(a, "tokenizer"):  # HFTokenizer
        return getattr(a.tokenizer, "name_or_path", None) == getattr(b.tokenizer, "name_or_path", None)
    same = all(getattr(a, k, None) == getattr(b, k, None) for k in ("vocab_size", "sot_token_id", "eot_token_id"))
    return same and repr(getattr(a, "clean_fn", None)) == repr(getattr(b, "clean_fn", None))


def decode_tokens(tokenizer, tokens: torch.Tensor) -> List[str]:
    """The captions behind a batch of token ids (special and padding tokens dropped)."""
    if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "batch_decode"):  # HFTokenizer
        return tokenizer.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
    special = {getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None), 0}
    out = []
    for row in tokens.tolist():
        if getattr(tokenizer, "eot_token_id", None) in row:
            row = row[:row.index(tokenizer.eot_token_id)]
        out.append(tokenizer.decode([t for t in row if t not in special]).strip())
    return out


class Teacher(nn.Module):
    """A frozen OpenCLIP model, its tokenizer and its image preparation."""

    def __init__(self, model: nn.Module, tokenizer, name: str, transform=None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.name, self.transform = tokenizer, name, transform
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean, self.std = tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.exp()) if isinstance(scale, torch.Tensor) else 100.0

    def train(self, mode: bool = True):
        return super().train(False)  # always eval: BN statistics and dropout of a teacher never change

    @property
    def embed_dim(self) -> int:
        """Width of the teacher's embeddings."""
        if getattr(self, "_embed_dim", None) is None:
            self._embed_dim = int(self.encode(None, self.tokenizer(["a"]).to(self.device))[1].shape[-1])
        return self._embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, images: Optional[torch.Tensor], texts: Optional[torch.Tensor]):
        """Unit-norm (image, text) embeddings of prepared inputs (either may be None)."""
        image = self.model.encode_image(images, normalize=True) if images is not None else None
        text = self.model.encode_text(texts, normalize=True) if texts is not None else None
        return image, text

    @torch.no_grad()
    def embed_student_batch(self, images: torch.Tensor, texts: torch.Tensor, student_tokenizer,
                            student_mean: Sequence[float], student_std: Sequence[float]):
        """The teacher's embeddings of the student's batch, re-prepared its way (module docstring)."""
        device = self.device
        images = adapt_images(images.to(device), student_mean, student_std, self.image_size, self.mean, self.std)
        if not same_tokenizer(student_tokenizer, self.tokenizer):
            texts = self.tokenizer(decode_tokens(student_tokenizer, texts.cpu()))
        return self.encode(images, texts.to(device))

    @torch.no_grad()
    def embed_student_texts(self, texts: torch.Tensor, student_tokenizer) -> torch.Tensor:
        """The teacher's unit-norm embeddings of the student's token ids (re-tokenised its way)."""
        if not same_tokenizer(student_tokenizer, self.tokenizer):
            texts = self.tokenizer(decode_tokens(student_tokenizer, texts.cpu()))
        return self.encode(None, texts.to(self.device))[1]

    @torch.no_grad()
    def embed_views(self, views: torch.Tensor) -> torch.Tensor:
        """The teacher's unit-norm embeddings of images already prepared its way (its size, mean and std)."""
        dtype = next(self.model.parameters()).dtype
        return self.encode(views.to(self.device, dtype), None)[0]

    @torch.no_grad()
    def embed_captions(self, captions: List[str]) -> torch.Tensor:
        """The teacher's unit-norm embeddings of raw captions (its own tokenizer)."""
        return self.encode(None, self.tokenizer(list(captions)).to(self.device))[1]

    @torch.no_grad()
    def embed_raw(self, pil_images, captions: List[str]):
        """The teacher's embeddings of raw images (its own inference transform) and raw captions."""
        dtype = next(self.model.parameters()).dtype
        images = torch.stack([self.transform(im) for im in pil_images]).to(self.device, dtype)
        return self.encode(images, self.tokenizer(list(captions)).to(self.device))


def check_teacher_spec(spec: str) -> str:
    """A one-line error for a teacher that cannot be built (unknown model, missing weights file), else ''."""
    import os

    import open_clip

    try:
        name, weights = parse_teacher(spec)
    except TeacherError as e:
        return str(e)
    if name.startswith(("hf-hub:", "local-dir:")):
        return ""
    try:
        known = open_clip.get_model_config(name) is not None
    except ValueError as e:  # an unknown timm backbone in BASE+TIMM_NAME
        return f"teacher {spec!r}: {e}"
    if not known:
        from .timm_names import nearest_names

        close = nearest_names(name, open_clip.list_models())
        hint = f" (did you mean {close}?)" if close else ""
        return f"teacher {spec!r}: unknown model {name!r}{hint}; see open_clip.list_models()"
    if weights is None:
        return (f"teacher {spec!r}: no weights; a randomly initialised teacher teaches nothing: write "
                f"{name}=CHECKPOINT (or a pretrained tag of open_clip.list_pretrained())")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if weights not in tags and "://" not in weights and not weights.startswith(("hf-hub:", "local-dir:")) \
            and not os.path.exists(weights):
        return (f"teacher {spec!r}: {weights!r} is neither a file nor a pretrained tag of {name}"
                + (f" ({', '.join(tags)})" if tags else ""))
    return ""


# what OpenCLIP raises for a wrong model name, pretrained tag or weights file (and a missing optional dependency)
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, ImportError, EOFError, pickle.UnpicklingError)


def _first(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run_settings(name: str, weights: Optional[str]) -> dict:
    """``create_model_and_transforms`` arguments of the trainer run ``weights`` came from (its ``params.txt``
    next to ``checkpoints/``: ``--force-image-size``, the image mean / std / interpolation, ...), when it trained
    the model ``name``: a teacher trained at a forced size is built at that size, not its config's."""
    from .checkpoint import run_create_kwargs, run_params

    if not weights or not os.path.isfile(weights):
        return {}
    params = run_params(weights)
    if params.get("model") != name:
        return {}
    kwargs = run_create_kwargs(params)
    kwargs.update({f"image_{k}": v for k, v in kwargs.pop("force_preprocess_cfg", {}).items()})
    return kwargs


def build_teacher(spec: str, device="cpu", precision: str = "fp32", cache_dir: Optional[str] = None) -> Teacher:
    """A frozen :class:`Teacher` from ``MODEL=WEIGHTS`` (see :func:`parse_teacher`); TeacherError in one line."""
    import open_clip

    error = check_teacher_spec(spec)
    if error:
        raise TeacherError(error)
    name, weights = parse_teacher(spec)
    run = run_settings(name, weights)
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            name, pretrained=weights, precision=precision, device=device, output_dict=True, cache_dir=cache_dir,
            require_pretrained=weights is not None, **run)
    except (torch.OutOfMemoryError, MemoryError) as e:  # before RuntimeError: it is one
        raise TeacherError(f"teacher {spec!r}: out of memory while loading it on {device} ({_first(e)}); free memory, "
                           "or precompute its embeddings with `open-clip-lightclip cache-teacher` and train with "
                           "--distill-cache") from e
    except _LOAD_ERRORS as e:  # what a wrong name, tag or file raises; any other exception is a bug: traceback
        raise TeacherError(f"teacher {spec!r}: cannot load it ({_first(e)}); check the model name and the weights") from e
    tokenizer = open_clip.get_tokenizer(name)
    teacher = Teacher(model, tokenizer, spec, transform)
    logging.info(f"open-clip-lightclip: teacher {spec} ({teacher.image_size[0]} px"
                 f"{', as its run trained it' if run else ''}, logit scale {teacher.logit_scale:.1f}), frozen")
    return teacher

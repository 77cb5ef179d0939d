"""Replayable augmentation: OpenCLIP's training transform as stored parameters (MobileCLIP's dataset
reinforcement stores each augmentation's parameters so that training can replay the view a teacher saw).

OpenCLIP's own train transform (``open_clip.image_transform(size, is_train=True, aug_cfg=...)`` without
``use_timm``) draws, per image: a ``RandomResizedCrop`` box, then with ``color_jitter_prob`` a colour jitter
(the order of its four operations and their factors), then with ``gray_scale_prob`` a grayscale switch; then
it converts to a tensor and normalises. :class:`AugmentSpec` holds the distributions,
:func:`draw_params` draws one augmentation's choices from them (torchvision's own samplers, seeded: the same
distribution the trainer draws from), and :func:`replay` applies stored choices at any output size:
the crop box is in source-image pixels, so the same view can be made at the teacher's and at the
student's resolution. Replaying the choices the train transform drew gives its output bit for bit.

A parameter row is ``float32[PARAM_WIDTH]``: ``top, left, height, width`` of the crop box, a jitter flag,
the jitter order (4), the brightness / contrast / saturation / hue factors (NaN: not drawn), a grayscale
flag. OpenCLIP's train transform has no horizontal flip (``hflip=0``), so none is drawn.
"""
import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["PARAM_WIDTH", "AugmentSpec", "AugmentError", "spec_from_transform", "draw_params", "replay",
           "output_layout"]

PARAM_WIDTH = 14
_JITTER_FNS = ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue")


class AugmentError(ValueError):
    """A transform whose random choices cannot be stored and replayed (one line)."""


@dataclass(frozen=True)
class AugmentSpec:
    """The distributions of OpenCLIP's train transform (see the module docstring)."""

    scale: Tuple[float, float] = (0.9, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: Optional[Tuple[float, float, float, float]] = None
    color_jitter_prob: float = 0.0
    gray_scale_prob: float = 0.0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentSpec":
        tup = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**tup)

    def describe(self) -> str:
        parts = [f"crop scale {self.scale[0]:g}-{self.scale[1]:g}"]
        if self.color_jitter_prob:
            parts.append(f"colour jitter {tuple(self.color_jitter)} p={self.color_jitter_prob:g}")
        if self.gray_scale_prob:
            parts.append(f"grayscale p={self.gray_scale_prob:g}")
        return ", ".join(parts)


def output_layout(transform) -> Tuple[Tuple[int, int], Tuple[float, ...], Tuple[float, ...]]:
    """``(size, mean, std)`` of an OpenCLIP train transform (a ``Compose``)."""
    from torchvision.transforms import Normalize, RandomResizedCrop

    steps = list(getattr(transform, "transforms", []))
    crop = next((t for t in steps if isinstance(t, RandomResizedCrop)), None)
    norm = next((t for t in steps if isinstance(t, Normalize)), None)
    if crop is None or norm is None:
        raise AugmentError("the training transform is not OpenCLIP's own (RandomResizedCrop ... Normalize): stored "
                           "augmentations replay only that one; drop use_timm (and re_prob) from --aug-cfg")
    return tuple(crop.size), tuple(norm.mean), tuple(norm.std)


def spec_from_transform(transform) -> AugmentSpec:
    """The :class:`AugmentSpec` of an ``open_clip.image_transform(..., is_train=True)``; :class:`AugmentError`
    for a transform whose choices cannot be replayed (timm's, or anything unknown)."""
    from open_clip.transform import MaybeConvertMode, MaybeToTensor, color_jitter, gray_scale
    from torchvision.transforms import Normalize, RandomResizedCrop

    output_layout(transform)
    spec = {}
    for t in transform.transforms:
        if isinstance(t, RandomResizedCrop):
            if t.interpolation.value != "bicubic":
                raise AugmentError(f"RandomResizedCrop with {t.interpolation.value} interpolation: replay uses "
                                   "OpenCLIP's bicubic")
            spec.update(scale=tuple(float(v) for v in t.scale), ratio=tuple(float(v) for v in t.ratio))
        elif isinstance(t, color_jitter):
            j = t.transf
            ranges = (j.brightness, j.contrast, j.saturation, j.hue)
            # ColorJitter(b, c, s, h) keeps (1 - b, 1 + b) etc. (hue: (-h, h)); store the arguments back
            spec.update(color_jitter=tuple(0.0 if r is None else round(float(r[1]) - (0 if i == 3 else 1), 6)
                                           for i, r in enumerate(ranges)), color_jitter_prob=float(t.p))
        elif isinstance(t, gray_scale):
            spec.update(gray_scale_prob=float(t.p))
        elif not isinstance(t, (MaybeConvertMode, MaybeToTensor, Normalize)):
            raise AugmentError(f"the training transform has a {type(t).__name__} step whose random choices are not "
                               "stored: stored augmentations replay OpenCLIP's own train transform (drop use_timm)")
    return AugmentSpec(**spec)


def draw_params(spec: AugmentSpec, image, seed: int) -> np.ndarray:
    """One augmentation's choices for ``image`` (PIL), drawn with torchvision's samplers from a generator
    seeded by ``seed`` (the global RNG is left as it was)."""
    from torchvision.transforms import ColorJitter, RandomResizedCrop

    row = np.full(PARAM_WIDTH, np.nan, dtype=np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        row[0:4] = RandomResizedCrop.get_params(image, list(spec.scale), list(spec.ratio))
        row[4] = row[13] = 0.0
        if spec.color_jitter_prob and float(torch.rand(())) < spec.color_jitter_prob:
            jitter = ColorJitter(*spec.color_jitter)
            order, *factors = ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
            row[4] = 1.0
            row[5:9] = order.numpy()
            row[9:13] = [np.nan if f is None else f for f in factors]
        if spec.gray_scale_prob and float(torch.rand(())) < spec.gray_scale_prob:
            row[13] = 1.0
    return row


def replay(image, params: Sequence[float], size: Tuple[int, int], mean: Sequence[float],
           std: Sequence[float]) -> torch.Tensor:
    """The view of ``image`` (PIL) that the stored ``params`` describe, at ``size``, normalised: what
    OpenCLIP's train transform returns when it draws these choices."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    p = [float(v) for v in params]
    top, left, height, width = (int(v) for v in p[0:4])
    x = F.resized_crop(image, top, left, height, width, list(size), InterpolationMode.BICUBIC, antialias=True)
    x = x.convert("RGB")
    if p[4]:
        for fn_id in (int(v) for v in p[5:9]):
            factor = p[9 + fn_id]
            if not math.isnan(factor):
                x = getattr(F, _JITTER_FNS[fn_id])(x, factor)
    if p[13]:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    return F.normalize(F.to_tensor(x), list(mean), list(std))

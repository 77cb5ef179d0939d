"""Synthetic captions in the loss (MobileCLIP: the loss of a batch sums over its real and its synthetic captions).

:class:`SyntheticCaptionLoss` wraps any ``--loss`` (distillation included): the wrapped loss on the real
captions, plus ``weight`` times the *caption terms* of the synthetic ones, each logged as
``synthetic_<term>``. A caption's terms are those a second caption of the same image adds
(:func:`caption_terms`): the contrastive / instance term of the objective (LightCLIP: the instance term
with its soft labels; CLIP-Lite: the JSD term; CLIP / SigLIP: the whole loss) and the distillation terms
(affinity on the image-synthetic caption similarities against the teachers', feature distance of the
synthetic caption's embedding). LightCLIP's token and MLM terms and CLIP-Lite's prior use the real caption
only (the synthetic one adds no image-side signal to them and would double their cost).
"""
from typing import Dict

import torch
import torch.nn as nn

__all__ = ["SYNTHETIC_PREFIX", "caption_terms", "SyntheticCaptionLoss"]

SYNTHETIC_PREFIX = "synthetic_"
_CAPTION_KEYS = ("logit_bias",)  # per-model outputs a caption term may read beside the embeddings


def caption_terms(loss: nn.Module, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                  **model_out) -> Dict[str, torch.Tensor]:
    """The named terms ``loss`` computes from one caption per image (module docstring). A loss module may define
    ``caption_terms(image_features, text_features, logit_scale, **model_out)``; otherwise its whole forward is one."""
    own = getattr(loss, "caption_terms", None)
    if own is not None:
        return own(image_features, text_features, logit_scale, **model_out)
    extra = {k: v for k, v in model_out.items() if k in _CAPTION_KEYS}
    out = loss(image_features=image_features, text_features=text_features, logit_scale=logit_scale,
               output_dict=True, **extra)
    return dict(out) if isinstance(out, dict) else {"contrastive_loss": out}


class SyntheticCaptionLoss(nn.Module):
    """``loss`` on the real captions + ``weight`` x its :func:`caption_terms` on the synthetic ones."""

    def __init__(self, loss: nn.Module, weight: float = 1.0):
        super().__init__()
        self.loss, self.weight = loss, float(weight)

    def forward(self, output_dict: bool = False, **model_out):
        synthetic = {k[len(SYNTHETIC_PREFIX):]: model_out.pop(k) for k in list(model_out)
                     if k.startswith(SYNTHETIC_PREFIX)}
        if "text_features" not in synthetic:
            raise ValueError("synthetic captions: model_out has no 'synthetic_text_features'; train on shards "
                             "`open-clip-lightclip reinforce` wrote with --captioner (and --distill-reinforced)")
        losses = self.loss(output_dict=True, **model_out)
        losses = dict(losses) if isinstance(losses, dict) else {"contrastive_loss": losses}
        rest = {k: v for k, v in model_out.items() if k not in ("image_features", "text_features", "logit_scale")}
        for k, v in synthetic.items():
            if k != "text_features":
                rest[k] = v  # the teachers' embeddings of the synthetic captions replace the real ones'
        terms = caption_terms(self.loss, model_out["image_features"], synthetic["text_features"],
                              model_out["logit_scale"], **rest)
        for name, value in terms.items():
            losses[f"{SYNTHETIC_PREFIX}{name}"] = self.weight * value
        return losses if output_dict else sum(losses.values())

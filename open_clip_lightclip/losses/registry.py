"""Loss registry behind the trainer's ``--loss`` flag: name -> factory(args) -> ``nn.Module``.

A factory gets the trainer's parsed ``args`` (rank, world size, flags) and returns a loss
module called as ``loss(**model_out, output_dict=True)`` that returns a dict of named terms.
"""
from typing import Callable, Dict, List

import torch.nn as nn

__all__ = ["register_loss", "create_loss", "list_losses"]

LossFactory = Callable[..., nn.Module]
_LOSSES: Dict[str, LossFactory] = {}


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Decorator: register ``factory(args) -> nn.Module`` under ``name``."""

    def _register(factory: LossFactory) -> LossFactory:
        _LOSSES[name] = factory
        return factory

    return _register


def list_losses() -> List[str]:
    return list(_LOSSES)


def create_loss(name: str, args) -> nn.Module:
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(_LOSSES)}")
    return _LOSSES[name](args)


def _upstream_create_loss(args) -> nn.Module:
    """OpenCLIP's own ``create_loss``, even after the plugin wrapped it."""
    import open_clip.factory

    fn = open_clip.factory.create_loss
    return getattr(fn, "__wrapped__", fn)(args)


@register_loss("clip")
def _clip_loss(args) -> nn.Module:
    """OpenCLIP's InfoNCE ``ClipLoss`` (or its CoCa / distillation variants, chosen as upstream does)."""
    args.siglip = False
    return _upstream_create_loss(args)


@register_loss("siglip")
def _siglip_loss(args) -> nn.Module:
    """OpenCLIP's sigmoid ``SigLipLoss``; ``--loss siglip`` implies upstream's ``--siglip``."""
    args.siglip = True
    return _upstream_create_loss(args)

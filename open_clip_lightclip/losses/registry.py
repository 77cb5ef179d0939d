"""Loss registry behind the trainer's ``--loss`` flag: name -> factory(args) -> ``nn.Module``.

A factory gets the trainer's parsed ``args`` (rank, world size, flags) and returns a loss
module called as ``loss(**model_out, output_dict=True)`` that returns a dict of named terms.
An entry may also bring its own trainer flags (``add_args``), a check of them run right
after parsing (``check_args``, raises ``ValueError`` with a one-line message) and a
``configure_model(model, args)`` run on the trainer's model right after it is built
(before locking, DDP and the optimizer), to switch on token outputs or attach
training-only modules, and ``inactive_args(args)``: its flags that change nothing for these ``args`` (those of a
term whose weight is 0), each with why, so that runs differing only there are one run and a user who set one is
told (:func:`idle_args` adds the other objectives' flags and the idle distillation flags), and ``leaves_unused(args)``:
True when some trainable parameters may feed no term (the trainer then freezes them, once every training module,
distillation's included, is attached).
"""
import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn

__all__ = ["LossEntry", "register_loss", "create_loss", "list_losses", "get_loss_entry", "idle_args", "flag_defaults",
           "flag_warnings"]


@dataclass(frozen=True)
class LossEntry:
    name: str
    factory: Callable[..., nn.Module]
    add_args: Optional[Callable] = None  # (argparse group) -> None
    check_args: Optional[Callable] = None  # (args) -> None, raises ValueError
    configure_model: Optional[Callable] = None  # (model, args) -> None
    inactive_args: Optional[Callable] = None  # (args) -> {name: why} of its args that change nothing for these args
    leaves_unused: Optional[Callable] = None  # (args) -> True when some trainable parameters may feed no term


_LOSSES: Dict[str, LossEntry] = {}


def register_loss(name: str, add_args=None, check_args=None, configure_model=None, inactive_args=None,
                  leaves_unused=None):
    """Decorator: register ``factory(args) -> nn.Module`` (and its optional hooks) under ``name``."""

    def _register(factory):
        _LOSSES[name] = LossEntry(name, factory, add_args, check_args, configure_model, inactive_args, leaves_unused)
        return factory

    return _register


def list_losses() -> List[str]:
    return list(_LOSSES)


def get_loss_entry(name: str) -> LossEntry:
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(_LOSSES)}")
    return _LOSSES[name]


def idle_args(args) -> Dict[str, str]:
    """The parsed trainer ``args`` that change nothing for this run, each with the end of a sentence saying why:
    every flag of another ``--loss`` (``lightclip_*`` for a ``--loss clip`` run), the run's own loss's
    ``inactive_args`` (a term whose weight is 0) and the distillation flags left idle (no teacher, or a term off)."""
    from .distill import inactive_distill_args

    loss = getattr(args, "loss", None)
    own = _LOSSES.get(loss)
    idle = {}
    for entry in _LOSSES.values():
        if entry is not own and entry.add_args:
            why = (f"with --loss {loss}" if loss else "without --loss") + f" (it belongs to --loss {entry.name})"
            idle.update({name: why for name in vars(args) if name.startswith(f"{entry.name}_")})
    idle.update(own.inactive_args(args) if own is not None and own.inactive_args else {})
    return {**idle, **inactive_distill_args(args)}


def flag_defaults() -> Dict[str, Any]:
    """Every plugin flag's default (``args`` names): each objective's flags and distillation's."""
    from .distill import add_distill_args

    parser = argparse.ArgumentParser(add_help=False)
    for entry in _LOSSES.values():
        if entry.add_args:
            entry.add_args(parser)
    add_distill_args(parser)
    return vars(parser.parse_args([]))


def flag_warnings(args) -> List[str]:
    """One line per plugin flag set away from its default that trains nothing in this run (:func:`idle_args` says
    why: another objective's flag, a flag of a term that is off, a distillation flag without a teacher), and one
    per absurd loss weight."""
    from .flags import absurd_weights

    defaults, idle, lines = flag_defaults(), idle_args(args), []
    for name, default in defaults.items():
        value = getattr(args, name, default)
        if name in idle and value != default:
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            lines.append(f"--{name.replace('_', '-')} {shown} trains nothing {idle[name]}")
    return lines + absurd_weights(args, [name for name in defaults if name not in idle])


def create_loss(name: str, args) -> nn.Module:
    return get_loss_entry(name).factory(args)


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

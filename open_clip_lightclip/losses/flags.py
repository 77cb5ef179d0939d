"""argparse types and checks shared by the objectives' trainer flags (``--lightclip-*``, ``--cliplite-*``,
``--distill-*``): a bad value stops at parse time with argparse's one-line usage error (exit 2)."""
import argparse
import math
from typing import Iterable, List

__all__ = ["finite_float", "ABSURD_WEIGHT", "absurd_weights"]

ABSURD_WEIGHT = 1e6  # a loss weight above this trains on one term's overflow: warned, not refused


def finite_float(text: str) -> float:
    """A float flag that is a finite number: ``nan`` / ``inf`` would switch a term off (``nan > 0`` is False) or
    train on NaN losses."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def absurd_weights(args: argparse.Namespace, names: Iterable[str]) -> List[str]:
    """One warning line per ``*_weight`` arg of ``names`` above :data:`ABSURD_WEIGHT`."""
    lines = []
    for name in names:
        value = getattr(args, name, None)
        if name.endswith("_weight") and isinstance(value, float) and value > ABSURD_WEIGHT:
            lines.append(f"--{name.replace('_', '-')} {value:g} is far above any useful loss weight (> {ABSURD_WEIGHT:g}): "
                         "that term's loss and gradients are scaled by it; did you mean a smaller value?")
    return lines

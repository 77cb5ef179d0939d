"""Losses: training objectives (each an ``nn.Module`` returning named terms), token matching, gathering, training progress,
which parameters a loss reaches.

Plain PyTorch; may import ``models/`` (the training-only heads' configs), never the seam,
``export/``, ``studies/``, ``benchmarks/`` or ``commands/``. Importing this package registers
every objective with the ``--loss`` registry.
"""
from .registry import (LossEntry, create_loss, flag_defaults, flag_warnings, get_loss_entry, idle_args, list_losses,
                       register_loss)

# Each objective registers itself on import; add new ones here.
from . import lightclip  # noqa: F401
from . import cliplite  # noqa: F401

__all__ = ["LossEntry", "create_loss", "flag_defaults", "flag_warnings", "get_loss_entry", "idle_args", "list_losses",
           "register_loss"]

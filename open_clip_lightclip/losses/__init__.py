"""Training objectives, each an ``nn.Module`` returning a dict of named loss terms.

Importing this package registers every objective with the ``--loss`` registry.
"""
from .registry import create_loss, list_losses, register_loss

__all__ = ["create_loss", "list_losses", "register_loss"]

"""Benchmarks: speed and memory tables behind ``open-clip-lightclip bench NAME``.

One module each, exposing ``register(subparsers)``.

May import ``models/``, ``losses/``, ``data/``, ``export/`` and the seam; never ``studies/`` or ``commands/``.

A new ``bench`` subcommand is a new module here; :mod:`open_clip_lightclip.commands.bench` finds it.
Keep module-level imports light (no torch): the command line imports every module to build ``--help``.
"""


def sync_device(device) -> None:
    """Wait for queued GPU work, so a timer reads what the device did (no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)

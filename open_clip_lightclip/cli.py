"""``open-clip-lightclip``: the command line. Subcommands live in :mod:`open_clip_lightclip.commands`."""
import argparse
import importlib
import os
import pkgutil
import sys
from typing import List, Optional

from . import commands

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="open-clip-lightclip",
        description="Lightweight CLIP training with OpenCLIP (LightCLIP / CLIP-Lite objectives).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    # Third-party progress bars (clip_benchmark's, one per class and batch of every evaluation) off, also in the
    # trainers a command starts; tqdm reads this once, when it is first imported. The commands' own bars pass
    # ``disable`` explicitly and stay.
    os.environ.setdefault("TQDM_DISABLE", "1")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

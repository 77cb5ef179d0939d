"""argparse types of the ``open-clip-lightclip`` subcommands: a bad value is a one-line usage error (exit 2)."""
import argparse
import os

__all__ = ["at_least", "finite_float", "device", "new_file", "shell_words", "out_folder", "shards_folder", "fraction"]


def at_least(low: int):
    """An int flag of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def finite_float(text: str) -> float:
    """A float flag that is a finite number (no nan / inf): the trainer flags' own check, imported when a value
    is given (the losses room imports torch)."""
    from ..losses.flags import finite_float as check

    return check(text)


def device(text: str) -> str:
    """A torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    return text


def new_file(text: str) -> str:
    """A file to write whose folder exists."""
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist: create it first or write elsewhere")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder: name a file")
    return text


def shell_words(text: str) -> str:
    """Flags written as one shell string (``--trainer-args '--device cuda'``): they must split as a shell would."""
    import shlex

    try:
        shlex.split(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"cannot split {text!r} as a shell would ({e}): check the quotes") from None
    return text


def out_folder(text: str) -> str:
    """An output folder: new, or an existing folder (not a file)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder: name a new or existing folder")
    return text


def shards_folder(text: str) -> str:
    """A folder written by ``build-shards``: its ``build_info.json``, if there, must be JSON (a missing folder is
    the study's to report, after the arms are checked)."""
    import json

    info = os.path.join(text, "build_info.json")
    if os.path.isfile(info):
        try:
            with open(info, encoding="utf-8") as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise argparse.ArgumentTypeError(f"{info} is not JSON ({e}): rebuild the folder with "
                                             "`open-clip-lightclip build-shards`") from None
    return text


def fraction(text: str) -> float:
    """A float in [0, 1)."""
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value

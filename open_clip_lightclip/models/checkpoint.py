"""Reading trainer checkpoints: a state_dict from a ``.pt`` / ``.safetensors`` file, one-line errors.

Plain PyTorch. ``training_only_module`` tells which keys belong to training-only modules
(:data:`~.registry.TRAINING_ONLY_MODULES`), which inference models do not have.
"""
import ast
import errno
import pickle
import zipfile
from pathlib import Path
from typing import Dict, NoReturn, Optional

import torch

from .registry import TRAINING_ONLY_MODULES

__all__ = ["CheckpointError", "read_state_dict", "training_only_module", "first_line", "unreadable", "raise_unreadable",
           "run_params", "run_create_kwargs"]

# what torch.load / pickle / zip raise for bytes that are no (whole) checkpoint
_CONTENT_ERRORS = (RuntimeError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError,
                   zipfile.BadZipFile)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message is one line naming the file."""


def training_only_module(key: str) -> Optional[str]:
    """The training-only module a state_dict key belongs to (``module.`` prefix allowed), else None."""
    key = key[len("module."):] if key.startswith("module.") else key
    head = key.split(".", 1)[0]
    return head if head in TRAINING_ONLY_MODULES else None


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0].split(". ")[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def unreadable(path, exc: BaseException) -> BaseException:
    """The one-line error for a file that exists but cannot be read as a checkpoint, by its cause: out of memory,
    a folder, an I/O or permission error, or contents that are no checkpoint (truncated or corrupt). ``exc``
    itself for any other exception (a bug, not the file: it keeps its traceback)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return CheckpointError(f"{path}: out of memory while reading it ({first_line(exc)}); free memory or read it "
                               "on a machine with more")
    if isinstance(exc, IsADirectoryError):
        return CheckpointError(f"{path}: a folder, not a checkpoint file (name a file in it, e.g. epoch_N.pt)")
    if isinstance(exc, OSError) and exc.errno not in (None, errno.EINVAL):  # EINVAL: a seek past a truncated end
        return CheckpointError(f"{path}: cannot read the file ({first_line(exc)}); check its permissions and the "
                               "disk or network it is on")
    if isinstance(exc, (OSError, *_CONTENT_ERRORS)) or type(exc).__name__ == "SafetensorError":
        return CheckpointError(f"{path}: cannot read it as a checkpoint (truncated or corrupt file?): {first_line(exc)}")
    return exc


def raise_unreadable(path, exc: BaseException) -> NoReturn:
    """Raise :func:`unreadable`'s error for ``exc`` (from ``exc``), or ``exc`` itself with its traceback."""
    error = unreadable(path, exc)
    if error is exc:
        raise exc
    raise error from exc


def _torch_load(path: Path, weights_only: bool, mmap: bool):
    if mmap:  # tensors stay on disk until touched: a cheap look at a large checkpoint
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
                raise
    return torch.load(path, map_location="cpu", weights_only=weights_only)


def read_state_dict(path, weights_only: bool = True, mmap: bool = False) -> Dict[str, torch.Tensor]:
    """The state_dict of a trainer checkpoint (``.pt``), a bare state_dict or a ``.safetensors`` file,
    with the ``module.`` prefix of DDP runs removed. Raises :class:`CheckpointError`.
    ``mmap``: memory-map ``torch.save`` files instead of reading them into memory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (truncated?)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(path), device="cpu")
        else:
            checkpoint = _torch_load(path, weights_only, mmap)
    except Exception as e:  # torch.load / pickle / zip / safetensors: each raises its own types
        raise_unreadable(path, e)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        raise CheckpointError(f"{path}: not a model checkpoint (no state_dict of tensors in it)")
    if all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def run_params(checkpoint) -> Dict[str, object]:
    """The trainer's ``params.txt`` of the run a checkpoint belongs to (``RUN/checkpoints/epoch_N.pt``)."""
    params_file = Path(checkpoint).resolve().parent.parent / "params.txt"
    if not params_file.is_file():
        return {}
    params = {}
    for line in params_file.read_text().splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def run_create_kwargs(params: Dict[str, object]) -> Dict[str, object]:
    """``open_clip.create_model`` arguments that reproduce the trainer's model and preprocessing."""
    kwargs = {}
    size = params.get("force_image_size")
    if isinstance(size, (list, tuple)):
        size = size[0] if len(size) == 1 else tuple(size)
    if size:
        kwargs["force_image_size"] = size
    if params.get("force_context_length"):
        kwargs["force_context_length"] = params["force_context_length"]
    if params.get("force_quick_gelu"):
        kwargs["force_quick_gelu"] = True
    if params.get("force_custom_text"):
        kwargs["force_custom_text"] = True
    pp = {}
    for arg, key in (("image_mean", "mean"), ("image_std", "std"), ("image_interpolation", "interpolation"),
                     ("image_resize_mode", "resize_mode")):
        if params.get(arg):
            pp[key] = params[arg]
    if pp:
        kwargs["force_preprocess_cfg"] = pp
    return kwargs

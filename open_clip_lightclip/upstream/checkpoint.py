"""Loading trainer checkpoints for inference: what ``pretrained='epoch_N.pt'`` goes through.

:func:`load_checkpoint` wraps OpenCLIP's ``factory.load_checkpoint`` (installed by
:mod:`.hooks`) so that

* keys of training-only modules (``TRAINING_ONLY_MODULES``: LightCLIP's fusion blocks / MLM
  head / token projections, CLIP-Lite's prior discriminator) that the model being loaded does
  not have are ignored, and a model that has them may load a checkpoint without them or with
  other shapes of them (fine-tuning with another ``--lightclip-token-dim``: those tensors keep
  the model's own initialisation, with a warning); every other key must still match exactly
  (upstream's ``strict=True``);
* a checkpoint trained with a SigLIP loss (``logit_bias`` in the file) loads into a model
  built without ``init_logit_bias``;
* a missing, truncated or foreign file stops with a one-line :class:`CheckpointError` naming
  the file and the problem.
"""
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn

from ..models.checkpoint import CheckpointError, first_line, read_state_dict, training_only_module

__all__ = ["load_checkpoint"]


def _examples(keys: List[str], n: int = 2) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _shape(t) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _mismatch(path, model: nn.Module, state_dict: Dict[str, torch.Tensor], missing: Iterable[str],
              unexpected: Iterable[str], cause: Optional[BaseException] = None) -> CheckpointError:
    own = model.state_dict()
    shapes = [k for k, v in state_dict.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    parts = []
    missing, unexpected = list(missing), list(unexpected)
    if missing:
        parts.append(f"{len(missing)} keys of the model missing from the file ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} keys in the file the model does not have ({_examples(unexpected)})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k!r}: {_shape(state_dict[k])} in the file, "
                     f"{_shape(own[k])} in the model)")
    if not parts and cause is not None:
        parts.append(first_line(cause))
    name = getattr(model, "_lightclip_config_name", None) or type(model).__name__
    return CheckpointError(
        f"{path}: not a checkpoint of this architecture ({name}): " + "; ".join(parts)
        + " (pick the --model / model name the checkpoint was trained with)")


def _skipping(load_state_dict, keys):
    """``load_state_dict`` that leaves ``keys`` out of the state_dict it is given."""

    def load(state_dict, strict: bool = True, assign: bool = False):
        return load_state_dict({k: v for k, v in state_dict.items() if k not in keys}, strict=strict, assign=assign)

    return load


def load_checkpoint(upstream, model: nn.Module, checkpoint_path, strict: bool = True, weights_only: bool = True,
                    device="cpu"):
    """OpenCLIP's ``load_checkpoint`` (``upstream``), tolerant of training-only modules only."""
    if Path(str(checkpoint_path)).suffix in (".npz", ".npy"):
        return upstream(model, checkpoint_path, strict=strict, weights_only=weights_only, device=device)
    state_dict = read_state_dict(checkpoint_path, weights_only=weights_only, mmap=True)  # no second copy in memory
    if "logit_bias" in state_dict and getattr(model, "logit_bias", False) is None:
        # trained with a SigLIP loss (upstream builds such models with init_logit_bias)
        like = model.logit_scale  # on the model's device and in its precision (create_model moved it already)
        model.logit_bias = nn.Parameter(torch.zeros_like(state_dict["logit_bias"], device=like.device, dtype=like.dtype))
    own = model.state_dict()
    stale = {k for k, v in state_dict.items()
             if training_only_module(k) and k in own and tuple(own[k].shape) != tuple(v.shape)}
    if stale:
        k = sorted(stale)[0]
        logging.warning(f"{checkpoint_path}: {len(stale)} tensor(s) of training-only modules have other shapes in "
                        f"the file than in the model (e.g. {k!r}: {_shape(state_dict[k])} in the file, {_shape(own[k])} "
                        "in the model); they keep the model's own initialisation")
        model.load_state_dict = _skipping(model.load_state_dict, stale)  # the one upstream is about to call
    try:
        incompatible = upstream(model, checkpoint_path, strict=False, weights_only=weights_only, device=device)
    except CheckpointError:
        raise
    except Exception as e:
        raise _mismatch(checkpoint_path, model, state_dict,
                        [k for k in own if k not in state_dict and not training_only_module(k)],
                        [k for k in state_dict if k not in own and not training_only_module(k)], e) from e
    finally:
        if stale:
            del model.load_state_dict  # back to the class's method
    missing = [k for k in incompatible.missing_keys if not training_only_module(k)]
    unexpected = [k for k in incompatible.unexpected_keys if not training_only_module(k)]
    if strict and (missing or unexpected):
        raise _mismatch(checkpoint_path, model, state_dict, missing, unexpected)
    return incompatible

"""Where a batch's values may be read, and which precision a fragile computation runs in.

Reading a tensor's values on the host (``.item()``, ``int(t)``, ``.tolist()``, ``nonzero``, boolean-mask
indexing) is free for a CPU tensor and a host-device sync on an accelerator: the host waits for every queued
kernel, and ``torch.compile`` breaks its graph there. Speed-ups that size tensors from values (trimming text to the
batch's longest caption, bucketing pairs by caption length) run only where :func:`reads_values` says so; elsewhere
the same results come from static shapes.

Numerically fragile code (exp, logsumexp, normalisers, Sinkhorn, KL) runs in fp32 inside :func:`no_autocast`,
whatever the caller's ``--precision``.
"""
import contextlib

import torch

__all__ = ["reads_values", "no_autocast", "autocast_dtype"]


def reads_values(x: torch.Tensor) -> bool:
    """True where choosing a shape from ``x``'s values is free: a CPU tensor, outside ``torch.compile`` (where a
    value read would break the graph, as a sync would on a GPU)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def no_autocast(x: torch.Tensor):
    """A context with autocast off on ``x``'s device (nothing to switch off where autocast does not exist)."""
    device = x.device.type
    return torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else contextlib.nullcontext()


def autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the autocast dtype where autocast is on: what its matmuls would cast it to anyway."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x

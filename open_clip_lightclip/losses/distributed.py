"""Gathering across ranks with OpenCLIP's ``ClipLoss`` semantics, and the scale of per-rank terms.

How a term's gradient relates to the single-process gradient on the global batch, after DDP
averages the ranks' gradients (W ranks), by the two flags upstream's ``ClipLoss`` reads:

================================  =====================  ==========================================
flags                             contrastive terms       terms of each rank's own samples (MLM, prior)
================================  =====================  ==========================================
neither                           1/W (as ClipLoss)       1/W (scaled by :func:`local_term_scale`)
``--gather-with-grad``            exact                   exact
``--local-loss --gather-with-grad``  exact                exact
``--local-loss``                  anchor paths only:      exact
                                  the candidates are
                                  constants (as ClipLoss)
================================  =====================  ==========================================

So no term's weight relative to another changes with W.
"""
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (all_gather with gradient)

__all__ = ["gather_batch", "all_reduce_sum", "local_term_scale", "with_value"]


def gather_batch(x: torch.Tensor, rank: int, world_size: int, gather_with_grad: bool = False,
                 local_loss: bool = False) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 (rank order), as ``open_clip.loss.gather_features`` does.

    ``gather_with_grad``: gradients flow back to every rank (``torch.distributed.nn.all_gather``).
    Otherwise other ranks' parts are constants, and the local part keeps its gradient unless
    ``local_loss`` (where the local rows reach the features through the anchors instead).
    """
    if world_size == 1:
        return x
    if gather_with_grad:
        return torch.cat(torch.distributed.nn.functional.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    if not local_loss:
        parts[rank] = x
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum of a (detached) tensor over ranks."""
    if world_size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def local_term_scale(world_size: int, local_loss: bool, gather_with_grad: bool) -> float:
    """Gradient scale of a term computed from one rank's own samples (already a global mean after DDP's
    averaging), so that it stays the same fraction of its single-process gradient as the contrastive terms:
    1/W where ``ClipLoss`` gives 1/W (each rank computes the whole batch's loss, only its own features
    carrying gradient: neither flag), else 1."""
    if world_size > 1 and not local_loss and not gather_with_grad:
        return 1.0 / world_size
    return 1.0


def with_value(grad_part: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A tensor whose value is ``value`` and whose gradient is ``grad_part``'s (what is logged vs what trains)."""
    return grad_part + (value - grad_part).detach()

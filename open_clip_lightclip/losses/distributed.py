"""Gathering across ranks with OpenCLIP's ``ClipLoss`` semantics, for any tensor."""
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (all_gather with gradient)

__all__ = ["gather_batch", "all_reduce_sum"]


def gather_batch(x: torch.Tensor, rank: int, world_size: int, gather_with_grad: bool = False) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 (rank order).

    ``gather_with_grad``: gradients flow back to every rank (``torch.distributed.nn.all_gather``).
    Otherwise other ranks' parts are constants and the local part keeps its gradient, as in
    ``open_clip.loss.gather_features``.
    """
    if world_size == 1:
        return x
    if gather_with_grad:
        return torch.cat(torch.distributed.nn.functional.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum of a (detached) tensor over ranks."""
    if world_size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x

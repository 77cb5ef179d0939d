"""Token-level image-text scores by (relaxed) bipartite matching of words to patches.

For image ``i`` and text ``j`` the word-by-patch similarity ``sim[w, n] = <t_jw, v_in>``
(unit-norm token embeddings) is matched and the pair's score is the mean similarity of the
matched (word, patch) pairs. The matching itself is computed without gradient; the score is
differentiable through ``sim`` (the envelope of the matching objective). Modes:

* ``hungarian``: exact one-to-one assignment (``scipy.optimize.linear_sum_assignment``);
  ``min(words, patches)`` pairs. CPU, one call per pair of samples: exact but slow.
* ``sinkhorn``: its entropic relaxation, batched on the device. Words and patches each have
  unit mass; a dustbin row / column with zero score absorbs the surplus of the larger side,
  so as ``eps -> 0`` the plan tends to the Hungarian assignment.
* ``max``: FILIP's token-wise max, each word takes its most similar patch.

Padding (and SOT / EOT) positions never match anything: they carry no mass. Texts are bucketed
by length (:func:`length_buckets`), so a pair costs its own caption's word positions (within
12.5%), not those of the longest caption of the gathered batch.

Sinkhorn kernels: ``scaling`` (default) iterates ``u = a / K v``, ``v = b / K^T u`` on
``K = exp(z - rowmax z)`` computed once: no ``exp``/``log`` inside the loop, the same plan as the
log-domain ``log`` kernel to fp32 rounding (tests: 1e-5); ``compiled`` runs those iterations
through ``torch.compile`` (fused kernels, dynamic batch dimension: worth it on a GPU; on the
CPU it compiles for ~50 s and measured no faster than ``scaling``).

Precision: the plan and the matched scores are computed in fp32 with autocast off, whatever the
caller's precision (under fp16 autocast a mat-vec of the scaling kernel would overflow 65504 once a
cosine passes ~0.55 at eps 0.05). Only the word-by-patch similarity itself (a matmul) runs in the
autocast dtype. The matching is defined on cosine similarities: ``sim`` is clamped to [-1, 1] for the
plan, so ``sim / eps`` spans at most ``2 / eps`` nats, and the kernel is chosen from ``eps`` alone
(``scaling`` up to 60 nats, i.e. eps >= 1/30; ``log`` below): no value of the batch is read on the host.

Shapes from values: bucketing texts by length and trimming unused word positions read the batch's
lengths, which is free for CPU tensors and a host-device sync on an accelerator; there every pair is
computed at the batch's full width instead (same scores; see :func:`reads_values`).

Memory: scores are computed in blocks of ``ci x cj`` sample pairs with
``ci * cj * words * patches <= chunk_elements``; with autograd each block is checkpointed,
so the peak is one block's ``sim`` and matching temporaries (about 4 x chunk_elements
floats) plus the ``(rows, cols)`` score matrix: linear in the global batch when the rows
are the local batch (``--local-loss``), never batch^2 x words x patches.
"""
import math
from typing import Callable, List, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from ..models.numerics import no_autocast, reads_values

__all__ = ["MATCHING_MODES", "SINKHORN_KERNELS", "sinkhorn_plan", "sinkhorn_plan_log", "hungarian_plan",
           "pair_scores", "aligned_scores", "token_scores", "trim_words", "word_lengths", "length_buckets",
           "scaling_kernel_fits"]

MATCHING_MODES = ("sinkhorn", "hungarian", "max")
SINKHORN_KERNELS = ("scaling", "compiled", "log")
# the scaling kernel works on exp(z - rowmax z); beyond this dynamic range of z = sim / eps (fp32 underflow of
# exp(-range) near 1e-38 at 87) the log-domain kernel is used. Cosines in [-1, 1]: range <= 2 / eps.
_SCALING_MAX_RANGE = 60.0
# a length bucket closes when padding its texts to its longest would cost more than this share extra
_BUCKET_SLACK = 0.125


def scaling_kernel_fits(eps: float) -> bool:
    """Whether the scaling kernel's ``exp(z - rowmax z)`` stays in fp32 range for cosines at ``eps``."""
    return 2.0 / eps <= _SCALING_MAX_RANGE


def _sinkhorn_problem(sim: torch.Tensor, word_mask: torch.Tensor, eps: float):
    """``z = sim / eps`` (in fp32 at least, ``sim`` clamped to [-1, 1]) with a dustbin row and column of score 0,
    and the masses: words and patches 1 each, the dustbins the surplus of the larger side, padding 0."""
    *batch, W, N = sim.shape
    sim = sim.to(torch.promote_types(sim.dtype, torch.float32)).clamp(-1.0, 1.0)  # fp32 (fp64 for fp64) cosines
    n_words = word_mask.sum(-1).to(sim.dtype)  # (...)
    z = sim.new_zeros(*batch, W + 1, N + 1)
    z[..., :W, :N] = sim / eps
    a = torch.cat([word_mask.to(sim.dtype), (N - n_words).clamp(min=0)[..., None]], dim=-1)
    b = torch.cat([sim.new_ones(*batch, N), (n_words - N).clamp(min=0)[..., None]], dim=-1)
    return z, a, b


@torch.no_grad()
def sinkhorn_plan_log(sim: torch.Tensor, word_mask: torch.Tensor, eps: float = 0.05, iters: int = 10) -> torch.Tensor:
    """Entropic one-to-one relaxation in the log domain (the reference kernel): every iteration takes two
    ``logsumexp`` over ``z + v`` / ``z + u``. sim: (..., W, N); word_mask: (..., W) -> plan (..., W, N)."""
    W, N = sim.shape[-2:]
    with no_autocast(sim):
        z, a, b = _sinkhorn_problem(sim, word_mask, eps)
        log_a, log_b = a.log(), b.log()  # -inf for zero mass: exp(-inf) = 0 in the plan, never inf - inf
        u = torch.zeros_like(log_a)
        v = torch.zeros_like(log_b)
        for _ in range(iters):
            u = log_a - torch.logsumexp(z + v[..., None, :], dim=-1)
            v = log_b - torch.logsumexp(z + u[..., :, None], dim=-2)
        return torch.exp(z + u[..., :, None] + v[..., None, :])[..., :W, :N]


def _scaling_iterations(K: torch.Tensor, a: torch.Tensor, b: torch.Tensor, iters: int) -> torch.Tensor:
    """Sinkhorn's matrix scaling on ``K = exp(z - rowmax z)``: ``u = a / K v``, ``v = b / K^T u``; two batched
    mat-vecs per iteration, no ``exp`` or ``log`` inside the loop. Every row of ``K`` holds a 1, so ``K v > 0``
    and a row without mass gets ``u = 0`` exactly. Returns the plan ``u K v`` (..., W+1, N+1)."""
    v = torch.ones_like(b)
    u = a
    for _ in range(iters):
        u = a / (K @ v[..., None])[..., 0]
        v = b / (u[..., None, :] @ K)[..., 0, :]
    return u[..., :, None] * K * v[..., None, :]


_COMPILED: Optional[Callable] = None


def _compiled_iterations() -> Callable:
    """``_scaling_iterations`` through ``torch.compile`` (dynamic batch dimension): one fused kernel family
    per shape class instead of ~40 launches per block (Triton on CUDA, C++/OpenMP on the CPU)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_scaling_iterations, dynamic=True)
    return _COMPILED


@torch.no_grad()
def sinkhorn_plan(sim: torch.Tensor, word_mask: torch.Tensor, eps: float = 0.05, iters: int = 10,
                  kernel: str = "scaling") -> torch.Tensor:
    """Entropic one-to-one relaxation. sim: (..., W, N); word_mask: (..., W) -> plan (..., W, N).

    ``kernel``: ``scaling`` (the default: matrix scaling on ``exp(z - rowmax z)``, algebraically the log-domain
    iteration, ~5x faster on the CPU), ``compiled`` (the same through ``torch.compile``) or ``log`` (the
    log-domain reference). Below eps 1/30 (``sim / eps`` could span more than 60 nats) ``log`` runs (fp32
    range). fp32 with autocast off, whatever the caller's precision."""
    if kernel not in SINKHORN_KERNELS:
        raise ValueError(f"unknown Sinkhorn kernel {kernel!r}; choose one of {SINKHORN_KERNELS}")
    W, N = sim.shape[-2:]
    if kernel == "log" or sim.numel() == 0 or not scaling_kernel_fits(eps):
        return sinkhorn_plan_log(sim, word_mask, eps, iters)
    with no_autocast(sim):
        z, a, b = _sinkhorn_problem(sim, word_mask, eps)
        K = torch.exp(z - z.amax(dim=-1, keepdim=True))  # row-wise: the plan u K v is unchanged
        run = _compiled_iterations() if kernel == "compiled" else _scaling_iterations
        return run(K, a, b, iters)[..., :W, :N]


@torch.no_grad()
def hungarian_plan(sim: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Exact maximum-similarity one-to-one assignment per pair (0/1 plan), on the CPU."""
    from scipy.optimize import linear_sum_assignment

    *batch, W, N = sim.shape
    flat_sim = sim.detach().float().reshape(-1, W, N).cpu().numpy()
    flat_mask = word_mask.reshape(-1, W).cpu().numpy()
    plan = torch.zeros(flat_sim.shape, dtype=torch.float32)
    for k in range(flat_sim.shape[0]):
        words = flat_mask[k].nonzero()[0]
        if len(words) == 0:
            continue
        rows, cols = linear_sum_assignment(flat_sim[k][words], maximize=True)
        plan[k, torch.as_tensor(words[rows]), torch.as_tensor(cols)] = 1.0
    return plan.reshape(*batch, W, N).to(sim.device)


def word_lengths(word_mask: torch.Tensor) -> torch.Tensor:
    """Positions each text needs: its last word's position + 1 (at least 1). word_mask (B, W) -> (B,)."""
    pos = torch.arange(1, word_mask.shape[-1] + 1, device=word_mask.device)
    return (word_mask * pos).amax(dim=-1).clamp(min=1) if word_mask.shape[-1] else \
        torch.ones(word_mask.shape[0], dtype=torch.long, device=word_mask.device)


def length_buckets(lengths: torch.Tensor, slack: float = _BUCKET_SLACK) -> List[Tuple[torch.Tensor, int]]:
    """Texts grouped by length: ``[(indices, width)]``, ascending widths, each group padded to its longest,
    which costs at most ``1 + slack`` times the group's own word positions (``slack=0``: one group per length).
    ``width`` None: the texts' full width (one group, on tensors whose values are not read, :func:`reads_values`)."""
    if not reads_values(lengths):
        return [(torch.arange(len(lengths), device=lengths.device), None)]
    order = torch.argsort(lengths, stable=True)
    ls = lengths[order].tolist()
    groups, start, own = [], 0, 0
    for i, length in enumerate(ls):
        if i > start and (i - start + 1) * length > (1 + slack) * (own + length):
            groups.append((order[start:i], ls[i - 1]))
            start, own = i, 0
        own += length
    if ls:
        groups.append((order[start:], ls[-1]))
    return groups


def _matched_scores(sim: torch.Tensor, mask: torch.Tensor, mode: str, eps: float, iters: int,
                    kernel: str = "scaling") -> torch.Tensor:
    """sim (..., W, N), mask (..., W) -> the mean similarity of the matched (word, patch) pairs (...)."""
    if mode not in MATCHING_MODES:
        raise ValueError(f"unknown matching mode {mode!r}; choose one of {MATCHING_MODES}")
    with no_autocast(sim):
        sim = sim.to(torch.promote_types(sim.dtype, torch.float32))  # scores in fp32 (fp64 for fp64)
        if mode == "max":
            best = sim.max(dim=-1).values.masked_fill(~mask, 0.0)
            return best.sum(-1) / mask.sum(-1).clamp(min=1)
        plan = sinkhorn_plan(sim, mask, eps, iters, kernel) if mode == "sinkhorn" else hungarian_plan(sim, mask)
        matched = mask.sum(-1).clamp(min=1, max=sim.shape[-1])
        return (plan.to(sim.dtype) * sim).sum(dim=(-1, -2)) / matched


def pair_scores(image_tokens: torch.Tensor, text_tokens: torch.Tensor, word_mask: torch.Tensor,
                mode: str = "sinkhorn", eps: float = 0.05, iters: int = 10, kernel: str = "scaling") -> torch.Tensor:
    """Scores of every (image, text) pair of a block: (Bi, N, D) x (Bj, W, D) -> (Bi, Bj)."""
    sim = torch.einsum("ind,jwd->ijwn", image_tokens, text_tokens)  # (Bi, Bj, W, N)
    return _matched_scores(sim, word_mask[None].expand(sim.shape[0], -1, -1), mode, eps, iters, kernel)


def _aligned_block(img: torch.Tensor, txt: torch.Tensor, mask: torch.Tensor, mode: str, eps: float, iters: int,
                   kernel: str) -> torch.Tensor:
    return _matched_scores(torch.einsum("mnd,mwd->mwn", img, txt), mask, mode, eps, iters, kernel)


def aligned_scores(image_tokens: torch.Tensor, text_tokens: torch.Tensor, word_mask: torch.Tensor,
                   mode: str = "sinkhorn", eps: float = 0.05, iters: int = 10,
                   chunk_elements: int = 2 ** 24, kernel: str = "scaling") -> torch.Tensor:
    """Scores of given pairs, image ``m`` with text ``m``: (M, N, D) x (M, W, D) -> (M,), the pairs bucketed by
    their text's length (each costs its own words) in checkpointed blocks of at most ``chunk_elements``
    similarity elements (the hard-negative token term's pairs)."""
    m, n = image_tokens.shape[:2]
    grad = torch.is_grad_enabled() and (image_tokens.requires_grad or text_tokens.requires_grad)
    pieces, order = [], []
    for idx, width in length_buckets(word_lengths(word_mask)):
        width = width or word_mask.shape[1]
        img, txt, msk = image_tokens[idx], text_tokens[idx, :width], word_mask[idx, :width]
        block = max(1, chunk_elements // max(width * n, 1))
        for i in range(0, len(idx), block):
            args = (img[i:i + block], txt[i:i + block], msk[i:i + block], mode, eps, iters, kernel)
            pieces.append(checkpoint(_aligned_block, *args, use_reentrant=False) if grad and m > block
                          else _aligned_block(*args))
        order.append(idx)
    if not pieces:
        return image_tokens.new_zeros(0)
    return torch.cat(pieces)[torch.argsort(torch.cat(order))]


def token_scores(image_tokens: torch.Tensor, text_tokens: torch.Tensor, word_mask: torch.Tensor,
                 mode: str = "sinkhorn", eps: float = 0.05, iters: int = 10,
                 chunk_elements: int = 2 ** 24, kernel: str = "scaling") -> torch.Tensor:
    """Blockwise ``pair_scores`` with bounded memory (see the module docstring): (Bi, Bj). The texts are
    bucketed by length, so a pair costs its own caption's word positions, not the batch's longest."""
    bi, n = image_tokens.shape[:2]
    bj = text_tokens.shape[0]
    grad = torch.is_grad_enabled() and (image_tokens.requires_grad or text_tokens.requires_grad)
    cols, order = [], []
    for idx, width in length_buckets(word_lengths(word_mask)):
        width = width or word_mask.shape[1]
        txt, msk = text_tokens[idx, :width], word_mask[idx, :width]
        per_pair = max(width * n, 1)
        side = max(1, int(math.sqrt(chunk_elements / per_pair)))
        ci = min(bi, side)
        cj = min(len(idx), max(1, chunk_elements // (per_pair * ci)))
        rows = []
        for i0 in range(0, bi, ci):
            parts = []
            for j0 in range(0, len(idx), cj):
                args = (image_tokens[i0:i0 + ci], txt[j0:j0 + cj], msk[j0:j0 + cj], mode, eps, iters, kernel)
                if grad and (bi > ci or bj > cj):
                    parts.append(checkpoint(pair_scores, *args, use_reentrant=False))
                else:
                    parts.append(pair_scores(*args))
            rows.append(torch.cat(parts, dim=1))
        cols.append(torch.cat(rows, dim=0))
        order.append(idx)
    if not cols:
        return image_tokens.new_zeros(bi, 0)
    return torch.cat(cols, dim=1)[:, torch.argsort(torch.cat(order))]


def trim_words(text_tokens: torch.Tensor, word_mask: torch.Tensor):
    """Drop the trailing positions no text of the batch uses (pure speed-up: they carry no mass; CPU tensors
    only, see :func:`reads_values`)."""
    if not reads_values(word_mask):
        return text_tokens, word_mask
    used = word_mask.any(dim=0).nonzero()
    last = int(used.max()) + 1 if used.numel() else 1
    return text_tokens[:, :last], word_mask[:, :last]

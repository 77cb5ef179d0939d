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

Padding (and SOT / EOT) positions never match anything: they carry no mass.

Memory: scores are computed in blocks of ``ci x cj`` sample pairs with
``ci * cj * words * patches <= chunk_elements``; with autograd each block is checkpointed,
so the peak is one block's ``sim`` and matching temporaries (about 4 x chunk_elements
floats) plus the ``(rows, cols)`` score matrix: linear in the global batch when the rows
are the local batch (``--local-loss``), never batch^2 x words x patches.
"""
import math
import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["MATCHING_MODES", "sinkhorn_plan", "hungarian_plan", "pair_scores", "aligned_scores", "token_scores",
           "trim_words"]

MATCHING_MODES = ("sinkhorn", "hungarian", "max")


@torch.no_grad()
def sinkhorn_plan(sim: torch.Tensor, word_mask: torch.Tensor, eps: float = 0.05, iters: int = 10) -> torch.Tensor:
    """Entropic one-to-one relaxation. sim: (..., W, N); word_mask: (..., W) -> plan (..., W, N)."""
    *batch, W, N = sim.shape
    sim = sim.float()
    n_words = word_mask.sum(-1).to(sim.dtype)  # (...)
    z = sim.new_zeros(*batch, W + 1, N + 1)
    z[..., :W, :N] = sim / eps
    log_a = torch.cat([torch.where(word_mask, 0.0, -math.inf).to(sim.dtype),
                       (N - n_words).clamp(min=0).log()[..., None]], dim=-1)
    log_b = torch.cat([sim.new_zeros(*batch, N).expand(*batch, N),
                       (n_words - N).clamp(min=0).log()[..., None]], dim=-1)
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b)
    for _ in range(iters):
        u = log_a - torch.logsumexp(z + v[..., None, :], dim=-1)
        v = log_b - torch.logsumexp(z + u[..., :, None], dim=-2)
    plan = torch.exp(z + u[..., :, None] + v[..., None, :])[..., :W, :N]
    return torch.nan_to_num(plan, nan=0.0)


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


def pair_scores(image_tokens: torch.Tensor, text_tokens: torch.Tensor, word_mask: torch.Tensor,
                mode: str = "sinkhorn", eps: float = 0.05, iters: int = 10) -> torch.Tensor:
    """Scores of every (image, text) pair of a block: (Bi, N, D) x (Bj, W, D) -> (Bi, Bj)."""
    sim = torch.einsum("ind,jwd->ijwn", image_tokens, text_tokens)  # (Bi, Bj, W, N)
    return _matched_scores(sim, word_mask[None].expand(sim.shape[0], -1, -1), mode, eps, iters)


def aligned_scores(image_tokens: torch.Tensor, text_tokens: torch.Tensor, word_mask: torch.Tensor,
                   mode: str = "sinkhorn", eps: float = 0.05, iters: int = 10,
                   chunk_elements: int = 2 ** 24) -> torch.Tensor:
    """Scores of given pairs, image ``m`` with text ``m``: (M, N, D) x (M, W, D) -> (M,), in checkpointed
    blocks of at most ``chunk_elements`` similarity elements (the hard-negative token term's pairs)."""
    m, n = image_tokens.shape[:2]
    block = max(1, chunk_elements // max(text_tokens.shape[1] * n, 1))
    grad = torch.is_grad_enabled() and (image_tokens.requires_grad or text_tokens.requires_grad)

    def scores(img, txt, mask):
        return _matched_scores(torch.einsum("mnd,mwd->mwn", img, txt), mask, mode, eps, iters)

    out = []
    for i in range(0, m, block):
        args = (image_tokens[i:i + block], text_tokens[i:i + block], word_mask[i:i + block])
        out.append(checkpoint(scores, *args, use_reentrant=False) if grad and m > block else scores(*args))
    return torch.cat(out)


def _matched_scores(sim: torch.Tensor, mask: torch.Tensor, mode: str, eps: float, iters: int) -> torch.Tensor:
    """sim (..., W, N), mask (..., W) -> the mean similarity of the matched (word, patch) pairs (...)."""
    if mode == "max":
        best = sim.max(dim=-1).values.masked_fill(~mask, 0.0)
        return best.sum(-1) / mask.sum(-1).clamp(min=1)
    if mode == "sinkhorn":
        plan = sinkhorn_plan(sim, mask, eps, iters)
    elif mode == "hungarian":
        plan = hungarian_plan(sim, mask)
    else:
        raise ValueError(f"unknown matching mode {mode!r}; choose one of {MATCHING_MODES}")
    matched = torch.minimum(mask.sum(-1), torch.tensor(sim.shape[-1], device=sim.device)).clamp(min=1)
    return (plan.to(sim.dtype) * sim).sum(dim=(-1, -2)) / matched


def token_scores(image_tokens: torch.Tensor, text_tokens: torch.Tensor, word_mask: torch.Tensor,
                 mode: str = "sinkhorn", eps: float = 0.05, iters: int = 10,
                 chunk_elements: int = 2 ** 24) -> torch.Tensor:
    """Blockwise ``pair_scores`` with bounded memory (see the module docstring): (Bi, Bj)."""
    bi, n = image_tokens.shape[:2]
    bj, w = text_tokens.shape[:2]
    per_pair = max(w * n, 1)
    side = max(1, int(math.sqrt(chunk_elements / per_pair)))
    ci, cj = min(bi, side), min(bj, max(1, chunk_elements // (per_pair * min(bi, side))))
    grad = torch.is_grad_enabled() and (image_tokens.requires_grad or text_tokens.requires_grad)
    rows = []
    for i0 in range(0, bi, ci):
        cols = []
        for j0 in range(0, bj, cj):
            args = (image_tokens[i0:i0 + ci], text_tokens[j0:j0 + cj], word_mask[j0:j0 + cj], mode, eps, iters)
            if grad and (bi > ci or bj > cj):
                cols.append(checkpoint(pair_scores, *args, use_reentrant=False))
            else:
                cols.append(pair_scores(*args))
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)


def trim_words(text_tokens: torch.Tensor, word_mask: torch.Tensor):
    """Drop the trailing positions no text of the batch uses (pure speed-up: they carry no mass)."""
    used = word_mask.any(dim=0).nonzero()
    last = int(used.max()) + 1 if used.numel() else 1
    return text_tokens[:, :last], word_mask[:, :last]

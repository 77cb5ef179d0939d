"""The token term's fast paths equal its reference: Sinkhorn kernels, length buckets (issue 13)."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from open_clip_lightclip.losses.token_matching import (
    aligned_scores, length_buckets, pair_scores, sinkhorn_plan, sinkhorn_plan_log, token_scores, word_lengths,
)


def _case(seed: int, bi: int, bj: int, n: int, w: int, d: int = 8, lengths=None):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(bi, n, d, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(bj, w, d, generator=g), dim=-1).requires_grad_()
    if lengths is None:
        lengths = torch.randint(0, w + 1, (bj,), generator=g).tolist()
    mask = torch.zeros(bj, w, dtype=torch.bool)
    for j, length in enumerate(lengths):
        mask[j, 1:1 + length] = True  # position 0 is SOT, as in the text tower's word mask
    return img, txt, mask


def _score_and_grads(fn, img, txt, weights):
    out = fn()
    return out.detach(), torch.autograd.grad((out * weights).sum(), (img, txt))


# sizes: (images, texts, patches, word positions); the masks mix zero words, one word and more words than patches
CASES = [(3, 5, 4, 9, [0, 1, 8, 3, 5]), (4, 4, 16, 12, [11, 1, 0, 7]), (2, 6, 9, 4, None), (5, 3, 1, 3, [2, 0, 1])]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("bi,bj,n,w,lengths", CASES)
def test_scaling_kernel_equals_the_log_domain_reference(seed, bi, bj, n, w, lengths):
    img, txt, mask = _case(seed, bi, bj, n, w + 1, lengths=lengths)
    weights = torch.randn(bi, bj, generator=torch.Generator().manual_seed(seed))
    ref, g_ref = _score_and_grads(lambda: pair_scores(img, txt, mask, kernel="log"), img, txt, weights)
    out, g = _score_and_grads(lambda: pair_scores(img, txt, mask, kernel="scaling"), img, txt, weights)
    assert torch.allclose(out, ref, atol=1e-5)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-5)
    sim = torch.einsum("ind,jwd->ijwn", img, txt).detach()
    plans = [sinkhorn_plan(sim, mask[None].expand(bi, -1, -1), kernel=k) for k in ("scaling", "log")]
    assert torch.allclose(plans[0], plans[1], atol=1e-5)
    assert plans[0][:, ~mask].abs().max() == 0  # padding, SOT and texts without words carry no mass


def test_scaling_kernel_falls_back_to_the_log_domain_beyond_fp32_range():
    img, txt, mask = _case(0, 2, 3, 5, 6, lengths=[5, 2, 3])
    sim = torch.einsum("ind,jwd->ijwn", img, txt).detach()
    m = mask[None].expand(2, -1, -1)
    # eps 0.002: sim / eps spans up to 1000 nats, exp(-1000) is 0 in fp32; the result must still be the plan
    plan = sinkhorn_plan(sim, m, eps=0.002, iters=50, kernel="scaling")
    assert torch.isfinite(plan).all()
    assert torch.equal(plan, sinkhorn_plan_log(sim, m, eps=0.002, iters=50))


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="unknown Sinkhorn kernel 'triton'; choose one of"):
        sinkhorn_plan(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), kernel="triton")


def test_length_buckets_cover_every_text_once_and_bound_the_padding():
    lengths = torch.tensor([3, 30, 4, 3, 12, 5, 29, 1, 1, 30])
    buckets = length_buckets(lengths)
    seen = torch.cat([idx for idx, _ in buckets])
    assert sorted(seen.tolist()) == list(range(10))
    for idx, width in buckets:
        assert width == int(lengths[idx].max())
        assert len(idx) * width <= 1.125 * int(lengths[idx].sum())
    assert [w for _, w in length_buckets(lengths, slack=0.0)] == [1, 3, 4, 5, 12, 29, 30]
    assert word_lengths(torch.tensor([[False, True, True, False], [False] * 4])).tolist() == [3, 1]


@pytest.mark.parametrize("mode", ["sinkhorn", "max", "hungarian"])
@pytest.mark.parametrize("chunk", [10 ** 9, 40])
def test_per_pair_lengths_equal_the_padded_result(mode, chunk):
    """Bucketed by length (each pair its own words) == every pair padded to the longest caption."""
    img, txt, mask = _case(3, 4, 7, 6, 14, lengths=[13, 1, 0, 2, 12, 6, 3])
    weights = torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    padded, g_pad = _score_and_grads(lambda: pair_scores(img, txt, mask, mode, kernel="log"), img, txt, weights)
    out, g = _score_and_grads(lambda: token_scores(img, txt, mask, mode, chunk_elements=chunk), img, txt, weights)
    assert torch.allclose(out, padded, atol=1e-5)
    for a, b in zip(g, g_pad):
        assert torch.allclose(a, b, atol=1e-5)
    # the hard-negative path scores given pairs, each image with its own text
    pick = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    w = torch.randn(7, generator=torch.Generator().manual_seed(2))
    one, g_one = _score_and_grads(lambda: aligned_scores(img[pick], txt, mask, mode, chunk_elements=chunk), img, txt, w)
    ref = pair_scores(img, txt, mask, mode, kernel="log")[pick, torch.arange(7)]
    g_ref = torch.autograd.grad((ref * w).sum(), (img, txt))
    assert torch.allclose(one, ref.detach(), atol=1e-5)
    for a, b in zip(g_one, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_kernel_equals_the_reference():
    """torch.compile of the scaling iterations (C++ on this CPU, Triton on CUDA), over two batch sizes of one
    compiled graph (dynamic batch dimension)."""
    for bi, bj in ((3, 5), (6, 2)):
        img, txt, mask = _case(bi, bi, bj, 7, 10)
        weights = torch.randn(bi, bj)
        ref, g_ref = _score_and_grads(lambda: pair_scores(img, txt, mask, kernel="log"), img, txt, weights)
        out, g = _score_and_grads(lambda: pair_scores(img, txt, mask, kernel="compiled"), img, txt, weights)
        assert torch.allclose(out, ref, atol=1e-5)
        for a, b in zip(g, g_ref):
            assert torch.allclose(a, b, atol=1e-5)

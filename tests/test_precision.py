"""The precision matrix: every term under fp32, fp16 autocast and bf16 autocast on inputs like a trained model's.

CPU autocast casts matmuls as CUDA's does (``torch.autocast("cpu", dtype=torch.float16)``), so these are the
numbers of ``--precision amp`` / ``amp_bf16`` on a GPU, up to the kernels' own rounding. Inputs: unit embeddings
of aligned pairs (positive cosines 0.80-0.95), word and patch tokens whose matched cosines reach ~0.8, logit scale
100, captions from empty to full length. Each term's value and gradient under autocast are compared with fp32 at
the same inputs (tolerances in ``TOL``), and the token scores of positives stay above the negatives'.
"""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from open_clip_lightclip.losses.cliplite import ClipLiteLoss, build_prior
from open_clip_lightclip.losses.distill import DistillationLoss
from open_clip_lightclip.losses.lightclip import LightCLIPLoss
from open_clip_lightclip.losses.synthetic import SyntheticCaptionLoss
from open_clip_lightclip.losses.token_matching import token_scores

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {"fp32": 1e-6, "fp16": 5e-3, "bf16": 2e-2}  # relative, on values; gradients: see _close
PROGRESS = SimpleNamespace(fraction=0.5, step=1, total_steps=2)


def _unit(x):
    return F.normalize(x, dim=-1)


def trained_like(b=12, d=32, n=49, w=16, td=24, seed=0):
    """Pairs as a trained model emits them (positive cosines 0.30-0.95, negatives ~0.2; at logit scale 100 some
    rows are hard, some saturated); word tokens matched to patches at cosines ~0.8; caption lengths from 0 (empty)
    to w - 2 (full)."""
    g = torch.Generator().manual_seed(seed)
    common = _unit(torch.randn(d, generator=g))  # a direction every embedding shares: negatives at cosine ~0.2
    image = _unit(0.45 * common + _unit(torch.randn(b, d, generator=g)))
    mix = torch.linspace(0.30, 0.95, b)[:, None]  # the positive cosine of each pair, from a hard one to an easy one
    other = _unit(0.45 * common + _unit(torch.randn(b, d, generator=g)))
    other = _unit(other - (other * image).sum(-1, keepdim=True) * image)
    text = mix * image + (1 - mix ** 2).sqrt() * other
    patches = _unit(torch.randn(b, n, td, generator=g))
    lengths = torch.linspace(0, w - 2, b).round().long()
    lengths[-1] = w - 2
    mask = torch.arange(w)[None] < lengths[:, None] + 1
    mask[:, 0] = False  # SOT
    words = _unit(0.85 * patches[:, torch.randperm(n, generator=g)[:w]] + 0.5 * _unit(torch.randn(b, w, td, generator=g)))
    return {"image_features": image, "text_features": text, "image_tokens": patches, "text_tokens": words,
            "text_mask": mask}


def _lightclip(**kw):
    base = dict(instance_weight=0.0, token_weight=0.0, mlm_weight=0.0, soft_label_max=0.2, progress=PROGRESS)
    return LightCLIPLoss(**{**base, **kw})


def _cliplite_prior(d):
    torch.manual_seed(0)
    return ClipLiteLoss(seed=1, prior=build_prior(d, "both"), prior_weight=1.0)


def _distill(feature: bool):
    class Zero(torch.nn.Module):
        def forward(self, image_features, text_features, logit_scale, output_dict=False, **_):
            return {"zero": (image_features.sum() + text_features.sum()) * 0}

    return DistillationLoss(Zero(), [100.0], affinity_weight=0.0 if feature else 1.0, feature_weight=float(feature))


TERMS = {  # name -> (loss factory, key of the term)
    "instance-uniform": (lambda d: _lightclip(instance_weight=1.0), "instance_loss"),
    "instance-similarity": (lambda d: _lightclip(instance_weight=1.0, soft_label_spread="similarity"), "instance_loss"),
    "token-sinkhorn-scaling": (lambda d: _lightclip(token_weight=1.0), "token_loss"),
    "token-sinkhorn-log": (lambda d: _lightclip(token_weight=1.0, sinkhorn_kernel="log"), "token_loss"),
    "token-max": (lambda d: _lightclip(token_weight=1.0, matching="max"), "token_loss"),
    "token-hungarian": (lambda d: _lightclip(token_weight=1.0, matching="hungarian"), "token_loss"),
    "token-hard-negatives": (lambda d: _lightclip(token_weight=1.0, token_negatives=4), "token_loss"),
    "cliplite-jsd": (lambda d: ClipLiteLoss(seed=1), "cliplite_jsd"),
    "cliplite-prior": (_cliplite_prior, "cliplite_prior"),
    "distill-affinity": (lambda d: _distill(False), "distill_affinity_loss"),
    "distill-feature": (lambda d: _distill(True), "distill_feature_loss"),
    # reinforced shards' synthetic captions: the caption terms on a second caption per image
    "synthetic-instance": (lambda d: SyntheticCaptionLoss(_lightclip(instance_weight=1.0)),
                           "synthetic_instance_loss"),
    "synthetic-cliplite-jsd": (lambda d: SyntheticCaptionLoss(ClipLiteLoss(seed=1)), "synthetic_cliplite_jsd"),
    "synthetic-distill-affinity": (lambda d: SyntheticCaptionLoss(_distill(False)), "synthetic_distill_affinity_loss"),
    "synthetic-distill-feature": (lambda d: SyntheticCaptionLoss(_distill(True)), "synthetic_distill_feature_loss"),
}


def _term(name, inputs, dtype):
    """The term's value and the gradients of every input it reaches, under autocast ``dtype`` (None: fp32)."""
    factory, key = TERMS[name]
    g = torch.Generator().manual_seed(5)

    def near(x):  # a unit embedding that agrees with ``x`` up to noise
        return _unit(x.detach() + 0.1 * torch.randn(x.shape, generator=g))

    if name.startswith("synthetic"):  # a second caption per image, close to the real one
        inputs = dict(inputs, synthetic_text_features=near(inputs["text_features"]))
    inputs = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    loss = factory(inputs["image_features"].shape[1])
    extra = {}
    if "distill" in name:  # a teacher that agrees with the student up to noise
        extra = {"distill_t0_image_features": near(inputs["image_features"]),
                 "distill_t0_text_features": near(inputs["text_features"])}
        if name.startswith("synthetic"):
            extra["synthetic_distill_t0_text_features"] = near(inputs["synthetic_text_features"])
    with torch.autocast("cpu", dtype=dtype or torch.float16, enabled=dtype is not None):
        value = loss(**inputs, **extra, logit_scale=torch.tensor(100.0), output_dict=True)[key]
    grads = torch.autograd.grad(value, [v for v in inputs.values() if v.requires_grad], allow_unused=True)
    return value.detach().float(), [g for g in grads if g is not None]


def _close(ref, out, tol):
    return abs(float(out) - float(ref)) <= tol * max(abs(float(ref)), 1e-3)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", list(TERMS))
def test_every_term_under_autocast_matches_fp32(name, precision):
    inputs = trained_like()
    ref, ref_grads = _term(name, inputs, None)
    out, grads = _term(name, inputs, PRECISIONS[precision])
    assert torch.isfinite(out) and _close(ref, out, TOL[precision]), (name, precision, float(ref), float(out))
    assert len(grads) == len(ref_grads) > 0
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        # direction and size of the gradient as in fp32 (a cast down may move single elements, not the step)
        assert F.cosine_similarity(g.flatten().double(), r.flatten().double(), dim=0) > 0.99, name
        assert abs(g.norm() / r.norm() - 1) < 5 * TOL[precision] + 1e-3, name


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("mode,kernel", [("sinkhorn", "scaling"), ("sinkhorn", "log"), ("max", "scaling"),
                                         ("hungarian", "scaling")])
def test_token_scores_of_aligned_pairs_rank_positives_first(precision, mode, kernel):
    """The failure this guards against: fp16 autocast turned the scaling kernel's K v into inf, and every aligned
    positive scored exactly 0 while negatives kept ~0.07 (the token term then trained backwards)."""
    x = trained_like()
    dtype = PRECISIONS[precision]
    with torch.autocast("cpu", dtype=dtype or torch.float16, enabled=dtype is not None):
        s = token_scores(x["image_tokens"], x["text_tokens"], x["text_mask"], mode=mode, kernel=kernel)
    ref = token_scores(x["image_tokens"], x["text_tokens"], x["text_mask"], mode=mode, kernel=kernel)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    torch.testing.assert_close(s, ref, atol=TOL[precision] * 2, rtol=0)
    has_words = x["text_mask"].any(1)
    diag = s.diag()[has_words]
    off = s[:, has_words].masked_fill(torch.eye(len(s), dtype=torch.bool)[:, has_words], -math.inf).amax(0)
    assert (diag > 0.5).all() and (diag > off[: len(diag)] + 0.1).all()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", pytest.param("bf16", marks=pytest.mark.extended)])
def test_compiled_sinkhorn_kernel_under_autocast(precision):
    x = trained_like(b=6)
    with torch.autocast("cpu", dtype=PRECISIONS[precision]):
        s = token_scores(x["image_tokens"], x["text_tokens"], x["text_mask"], kernel="compiled")
    ref = token_scores(x["image_tokens"], x["text_tokens"], x["text_mask"], kernel="log")
    torch.testing.assert_close(s, ref, atol=2 * TOL[precision], rtol=0)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_whole_lightclip_step_under_autocast_matches_fp32(precision):
    """LightCLIP-Tiny with every training head (token projections, fusion, MLM) + the three-term loss: each term
    under autocast within tolerance of fp32 at the same weights, inputs and masking, gradients finite."""
    import open_clip

    from open_clip_lightclip.models.lightclip import text_word_mask
    from open_clip_lightclip.models.train_heads import LightCLIPTrainCfg, mask_tokens

    torch.manual_seed(0)
    model = open_clip.create_model("LightCLIP-Tiny", output_dict=True, force_image_size=64)
    model.add_train_heads(LightCLIPTrainCfg())
    model.train()
    captions = ["", "a", "a red circle on a white background", " ".join(["word"] * 40)]  # empty .. truncated
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(captions)
    images = torch.randn(len(captions), 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mlm_mask = mask_tokens(text, text_word_mask(text), 0.15, generator=torch.Generator().manual_seed(2))
    loss = LightCLIPLoss(token_weight=1.0, mlm_weight=0.5, progress=PROGRESS)
    bn = {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}

    def step(dtype):
        model.zero_grad()
        model.load_state_dict({**model.state_dict(), **bn})  # the same BatchNorm statistics each time
        with torch.autocast("cpu", dtype=dtype or torch.float16, enabled=dtype is not None):
            out = model.forward_train(images, text, mlm_mask=mlm_mask)
            out["logit_scale"] = torch.tensor(100.0)
            terms = loss(**out, output_dict=True)
        sum(terms.values()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return {k: float(v.detach()) for k, v in terms.items()}, grads

    ref, ref_grads = step(None)
    out, grads = step(PRECISIONS[precision])
    assert set(out) == {"instance_loss", "token_loss", "mlm_loss"}
    for key in ref:  # the towers themselves run in half precision here: a looser bound than one term's
        assert math.isfinite(out[key]) and abs(out[key] - ref[key]) <= 10 * TOL[precision] * abs(ref[key]), key
    assert len(grads) == len(ref_grads) and all(torch.isfinite(g).all() for g in grads)

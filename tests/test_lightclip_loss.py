"""`--loss lightclip`: each term against hand-computed values; matching modes; MLM; plain inference."""
import itertools
import math
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from scipy.optimize import linear_sum_assignment

from open_clip_lightclip.losses.lightclip import LightCLIPLoss, soft_label_eps, soft_targets
from open_clip_lightclip.losses.token_matching import (
    hungarian_plan, pair_scores, sinkhorn_plan, token_scores, trim_words)
from open_clip_lightclip.models import text_word_mask
from open_clip_lightclip.losses.progress import TrainingProgress
from open_clip_lightclip.models.train_heads import LightCLIPTrainCfg, mask_tokens


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _fixed(fraction):
    return SimpleNamespace(fraction=fraction, step=0, total_steps=1)


# --- instance level ---------------------------------------------------------------------------
def test_instance_term_with_e0_is_clip_loss():
    img, txt = _unit(8, 16, seed=1), _unit(8, 16, seed=2)
    scale = torch.tensor(14.3)
    ours = LightCLIPLoss(token_weight=0, mlm_weight=0, soft_label_max=0.3, progress=_fixed(0.0))
    expected = ClipLoss()(img, txt, scale)
    assert abs(ours(img, txt, scale, output_dict=True)["instance_loss"] - expected) < 1e-6


def test_instance_term_soft_labels_by_hand():
    # 2x2: logits [[2, 0], [1, 3]], e = 0.2 -> targets [[0.8, 0.2], [0.2, 0.8]] (one negative each)
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(2.0)
    loss = LightCLIPLoss(token_weight=0, mlm_weight=0, soft_label_max=0.4, progress=_fixed(0.5))
    assert loss.soft_label_eps == pytest.approx(0.2)
    logits = scale * img @ txt.T  # [[2, 0], [1.2, 1.6]]
    targets = torch.tensor([[0.8, 0.2], [0.2, 0.8]])

    def ce(lg):
        return -(targets * lg.log_softmax(1)).sum(1).mean()

    expected = (ce(logits) + ce(logits.T)) / 2
    assert torch.allclose(loss(img, txt, scale), expected, atol=1e-6)


def test_soft_targets_uniform_and_similarity():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    uni = soft_targets(logits, labels, 0.3, "uniform")
    assert torch.allclose(uni, torch.tensor([[0.7, 0.1, 0.1, 0.1]]))
    sim = soft_targets(logits, labels, 0.3, "similarity")
    neg = torch.tensor([1.0, 0.0, -1.0]).softmax(0) * 0.3
    assert torch.allclose(sim, torch.cat([torch.tensor([0.7]), neg])[None])
    assert torch.allclose(sim.sum(1), torch.ones(1))


def test_soft_label_schedules():
    assert soft_label_eps(0.0, 0.2) == 0.0 and soft_label_eps(1.0, 0.2) == pytest.approx(0.2)
    assert soft_label_eps(0.25, 0.2, "linear") == pytest.approx(0.05)
    assert soft_label_eps(0.5, 0.2, "cosine") == pytest.approx(0.1)
    assert soft_label_eps(0.1, 0.2, "constant") == pytest.approx(0.2)
    assert soft_label_eps(2.0, 0.2) == pytest.approx(0.2)  # clamped


def test_progress_follows_the_trainer_scheduler():
    from open_clip_train.scheduler import cosine_lr  # wrapped by the plugin

    progress = TrainingProgress()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    adjust = progress.wrap_scheduler_factory(cosine_lr.__wrapped__)(opt, 1.0, 2, 40)
    adjust(10)
    assert progress.total_steps == 40 and progress.fraction == 0.25
    assert hasattr(cosine_lr, "__wrapped__")  # the trainer's own factory records PROGRESS too


# --- token level ------------------------------------------------------------------------------
def _tokens(bi=3, bj=4, n=5, w=6, d=8, seed=0):
    img = _unit(bi, n, d, seed=seed)
    txt = _unit(bj, w, d, seed=seed + 1)
    mask = torch.zeros(bj, w, dtype=torch.bool)
    for j, k in enumerate([3, 6, 1, 4][:bj]):
        mask[j, 1:1 + k] = True  # words start after SOT; position 0 never a word
    mask[:, 0] = False
    return img, txt, mask


def test_hungarian_matches_scipy_and_ignores_padding():
    img, txt, mask = _tokens(n=4, w=7)
    scores = pair_scores(img, txt, mask, "hungarian")
    for i, j in itertools.product(range(img.shape[0]), range(txt.shape[0])):
        sim = (txt[j] @ img[i].T).numpy()  # (W, N)
        words = mask[j].nonzero().flatten().numpy()
        rows, cols = linear_sum_assignment(sim[words], maximize=True)
        expected = sim[words][rows, cols].mean() if len(words) else 0.0
        assert scores[i, j].item() == pytest.approx(float(expected), abs=1e-6)
    plan = hungarian_plan(torch.einsum("ind,jwd->ijwn", img, txt), mask[None].expand(3, -1, -1))
    assert plan[:, ~mask].sum() == 0  # padding / SOT rows carry nothing


def test_token_wise_max_matches_a_direct_loop():
    img, txt, mask = _tokens()
    scores = pair_scores(img, txt, mask, "max")
    for i in range(img.shape[0]):
        for j in range(txt.shape[0]):
            words = [w for w in range(txt.shape[1]) if mask[j, w]]
            best = [max(float(txt[j, w] @ img[i, n]) for n in range(img.shape[1])) for w in words]
            assert scores[i, j].item() == pytest.approx(sum(best) / max(len(best), 1), abs=1e-6)


def test_sinkhorn_plan_marginals_and_limit_is_hungarian():
    img, txt, mask = _tokens(n=5, w=7)
    sim = torch.einsum("ind,jwd->ijwn", img, txt)
    m = mask[None].expand(3, -1, -1)
    plan = sinkhorn_plan(sim, m, eps=0.05, iters=200)
    assert plan[~m].abs().max() < 1e-6  # non-words carry no mass
    n_words = m.sum(-1)
    assert torch.allclose(plan.sum(-1)[m & (n_words <= 5)[..., None]], torch.ones(()), atol=5e-3)  # words fully matched
    assert (plan.sum(-2) <= 1 + 5e-3).all()  # a patch is used at most once
    sharp = pair_scores(img, txt, mask, "sinkhorn", eps=0.002, iters=2000)
    exact = pair_scores(img, txt, mask, "hungarian")
    assert torch.allclose(sharp, exact, atol=2e-3)


@pytest.mark.parametrize("mode", ["sinkhorn", "max", "hungarian"])
def test_chunked_scores_and_gradients_equal_unchunked(mode):
    img, txt, mask = _tokens(bi=4, bj=4, n=5, w=7)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    full = token_scores(img, txt, mask, mode, chunk_elements=10 ** 9)
    g_full = torch.autograd.grad((full * torch.arange(16.0).view(4, 4)).sum(), (img, txt))
    chunked = token_scores(img, txt, mask, mode, chunk_elements=2 * 5 * 7)  # 2 pairs per block
    g_chunk = torch.autograd.grad((chunked * torch.arange(16.0).view(4, 4)).sum(), (img, txt))
    assert torch.allclose(full, chunked, atol=1e-6)
    for a, b in zip(g_full, g_chunk):
        assert torch.allclose(a, b, atol=1e-6)


def test_trim_words_keeps_every_word():
    txt, mask = torch.randn(2, 10, 3), torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 1:3] = True
    mask[1, 1:6] = True
    t2, m2 = trim_words(txt, mask)
    assert t2.shape == (2, 6, 3) and m2.sum() == mask.sum()


def test_token_term_by_hand():
    # one patch per image, one word per text: scores are plain dot products
    img = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    txt = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.6, 0.8], [0.0, 0.0]]])
    mask = torch.tensor([[False, True, False], [False, True, False]])
    loss = LightCLIPLoss(token_weight=1, instance_weight=0, mlm_weight=0, matching="hungarian", progress=_fixed(0))
    scale = torch.tensor(3.0)
    logits = scale * torch.tensor([[1.0, 0.6], [0.0, 0.8]])
    expected = (F.cross_entropy(logits, torch.arange(2)) + F.cross_entropy(logits.T, torch.arange(2))) / 2
    value = loss(torch.zeros(2, 2), torch.zeros(2, 2), scale, image_tokens=img, text_tokens=txt, text_mask=mask)
    assert torch.allclose(value, expected, atol=1e-6)


# --- MLM ------------------------------------------------------------------------------------
def test_masking_rule_never_touches_special_tokens():
    tok = open_clip.get_tokenizer("LightCLIP-Tiny")
    text = tok(["a red circle on a white background"] * 4000)
    words = text_word_mask(text)
    gen = torch.Generator().manual_seed(0)
    selected, use_mask, ids = mask_tokens(text, words, 0.15, (0.8, 0.1, 0.1), generator=gen)
    assert not selected[~words].any()
    assert (ids[~selected] == text[~selected]).all()
    # exactly round(15% of 7 words) = 1 per caption (BERT's count), each word equally likely
    assert selected.sum(1).tolist() == [1] * 4000
    per_word = selected[:, 1:8].float().mean(0)
    assert torch.allclose(per_word, torch.full((7,), 1 / 7), atol=0.02)
    longer = tok(["one two three four five six seven eight nine ten eleven twelve thirteen fourteen"] * 2)
    assert mask_tokens(longer, text_word_mask(longer), 0.15)[0].sum(1).tolist() == [2, 2]  # round(2.1)
    empty = tok([""])
    assert not mask_tokens(empty, text_word_mask(empty), 0.15)[0].any()
    assert use_mask.sum().item() / selected.sum().item() == pytest.approx(0.8, abs=0.02)
    changed = (ids != text) & selected
    assert changed.sum().item() / selected.sum().item() == pytest.approx(0.1, abs=0.02)


def _model_with_heads(seed=0, **cfg):
    torch.manual_seed(seed)
    model = open_clip.create_model("LightCLIP-Tiny", output_dict=True, force_image_size=64)
    model.add_train_heads(LightCLIPTrainCfg(**cfg))
    return model.train()


def test_mlm_loss_only_on_masked_positions():
    model = _model_with_heads()
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(["a red circle", "a blue square on white"])
    words = text_word_mask(text)
    selected = torch.zeros_like(words)
    selected[0, 2], selected[1, 1], selected[1, 4] = True, True, True
    mlm_mask = (selected, selected.clone(), text.clone())
    captured = {}
    model.lightclip_train.mlm_transform.register_forward_hook(lambda m, i, o: captured.update(h=o))
    out = model.forward_train(torch.randn(2, 3, 64, 64), text, mlm_mask=mlm_mask)
    assert out["mlm_count"].tolist() == [1.0, 2.0]
    h = captured["h"]  # (B, K, W): each text's selected positions first, in order
    h = torch.stack([h[0, 0], h[1, 0], h[1, 1]])
    logits = F.linear(h, model.text.token_embedding.weight, model.lightclip_train.mlm_bias)
    ce = F.cross_entropy(logits, text[selected], reduction="none")
    assert torch.allclose(out["mlm_loss_sum"], torch.stack([ce[0], ce[1] + ce[2]]), atol=1e-5)
    loss = LightCLIPLoss(instance_weight=0, token_weight=0, mlm_weight=1.0, progress=_fixed(0))
    assert torch.allclose(loss(**out, logit_scale=torch.tensor(1.0)), ce.mean(), atol=1e-5)


def test_fusion_injects_the_image_into_mlm():
    model = _model_with_heads()
    for block in model.lightclip_train.fusion.values():
        torch.nn.init.constant_(block.gate, 1.0)
        torch.nn.init.constant_(block.mlp_gate, 1.0)
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(["a red circle on a white background"])
    mlm_mask = mask_tokens(text, text_word_mask(text), 0.5, generator=torch.Generator().manual_seed(0))
    a = model.forward_train(torch.zeros(1, 3, 64, 64), text, mlm_mask=mlm_mask)["mlm_loss_sum"]
    b = model.forward_train(torch.ones(1, 3, 64, 64), text, mlm_mask=mlm_mask)["mlm_loss_sum"]
    assert not torch.allclose(a, b)
    assert set(model.lightclip_train.fusion) == {"2", "4", "6"}


def test_fusion_layer_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match=r"fusion layer\(s\) \[7\] don't exist: the text tower has layers 1..6"):
        _model_with_heads(fusion_layers=(2, 7))


# --- inference stays plain --------------------------------------------------------------------
def test_inference_is_plain_clip_with_or_without_training_heads():
    torch.manual_seed(0)
    plain = open_clip.create_model("LightCLIP-Tiny", output_dict=True, force_image_size=64)
    trained = _model_with_heads()
    trained.load_state_dict({**trained.state_dict(), **plain.state_dict()})

    def forbid(module, inputs):
        raise AssertionError(f"training-only module ran at inference: {module.__class__.__name__}")

    for m in trained.lightclip_train.modules():
        m.register_forward_pre_hook(forbid)
    images = torch.randn(2, 3, 64, 64)
    texts = open_clip.get_tokenizer("LightCLIP-Tiny")(["a red circle", "a blue square"])
    for mode in ("eval", "train"):
        getattr(plain, mode)(), getattr(trained, mode)()
        with torch.no_grad():
            assert torch.equal(plain.encode_image(images), trained.encode_image(images))
            assert torch.equal(plain.encode_text(texts), trained.encode_text(texts))
    plain.eval(), trained.eval()
    with torch.no_grad():
        a, b = plain(images, texts), trained(images, texts)
    assert a.keys() == b.keys() == {"image_features", "text_features", "logit_scale"}
    assert torch.equal(a["image_features"], b["image_features"])


def test_zero_weights_skip_their_modules():
    model = _model_with_heads(token=False, mlm=True)
    assert not hasattr(model.lightclip_train, "image_token_proj")
    out = model(torch.randn(2, 3, 64, 64), torch.randint(1, 400, (2, 32)))
    assert "image_tokens" not in out and "mlm_loss_sum" in out
    loss = LightCLIPLoss(token_weight=0, mlm_weight=1.0, progress=_fixed(0))
    assert set(loss(**out, output_dict=True)) == {"instance_loss", "mlm_loss"}


def test_fusion_block_is_gated_cross_attention():
    from open_clip_lightclip.models.fusion import FusionBlock, ImageKV

    torch.manual_seed(0)
    kv, block = ImageKV(6, 8, 2), FusionBlock(8, 2)
    x, img = torch.randn(3, 5, 8), torch.randn(3, 7, 6)
    k, v = kv(img)
    assert k.shape == v.shape == (3, 2, 7, 4)
    assert torch.equal(block(x, k, v), x)  # both gates 0 at init: exactly the identity
    x3 = 3 * x  # |x| ~ 3: the ungated MLP path moved such inputs by up to 0.74
    assert torch.equal(block(x3, k, v), x3)
    torch.nn.init.constant_(block.gate, 0.7)
    torch.nn.init.constant_(block.mlp_gate, -0.4)
    q = block.q(block.ln_q(x)).view(3, 5, 2, 4).transpose(1, 2)
    attn = ((q @ k.transpose(-1, -2)) / 2.0).softmax(-1) @ v  # scale 1/sqrt(head dim 4)
    y = x + math.tanh(0.7) * block.out(attn.transpose(1, 2).reshape(3, 5, 8))
    assert torch.allclose(block(x, k, v), y + math.tanh(-0.4) * block.mlp(block.ln_mlp(y)), atol=1e-5)


def test_fusion_blocks_leave_the_mlm_pass_unchanged_at_initialisation():
    """Switching fusion on changes nothing before training: the MLM pass equals the one without fusion blocks."""
    model = _model_with_heads()
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(["a red circle on a white background"])
    mlm_mask = mask_tokens(text, text_word_mask(text), 0.5, generator=torch.Generator().manual_seed(0))
    images = 3 * torch.randn(1, 3, 64, 64)
    fused = model.forward_train(images, text, mlm_mask=mlm_mask)["mlm_loss_sum"]
    model.lightclip_train.fusion = torch.nn.ModuleDict()  # the same pass, fusion blocks removed
    assert torch.equal(model.forward_train(images, text, mlm_mask=mlm_mask)["mlm_loss_sum"], fused)


def test_token_term_with_its_own_learned_temperature():
    """--lightclip-token-temperature own: the token term uses model.lightclip_train.token_logit_scale (CLIP's
    initial 1/0.07, clamped at 100 like the model's), gets its gradient, and the instance term keeps logit_scale."""
    model = _model_with_heads(mlm=False, token_temperature="own")
    assert model.lightclip_train.token_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    torch.nn.init.constant_(model.lightclip_train.token_logit_scale, 1.5)
    out = model(torch.randn(3, 3, 64, 64), open_clip.get_tokenizer("LightCLIP-Tiny")(["a red circle", "a cat", "x y z"]))
    # one copy per sample, as every output the trainer concatenates under --accum-freq (a 0-d tensor crashed it)
    assert out["token_logit_scale"].shape == (3,)
    assert torch.allclose(out["token_logit_scale"], torch.tensor(math.exp(1.5)))
    loss = LightCLIPLoss(token_weight=1, mlm_weight=0, soft_label_max=0, progress=_fixed(0))
    terms = loss(**out, output_dict=True)
    expected = loss.token_loss(out["image_tokens"], out["text_tokens"], out["text_mask"], torch.tensor(math.exp(1.5)))
    assert torch.allclose(terms["token_loss"], expected, atol=1e-6)
    assert torch.allclose(terms["instance_loss"],
                          loss.instance_loss(out["image_features"], out["text_features"], out["logit_scale"]), atol=1e-6)
    terms["token_loss"].backward()
    assert model.lightclip_train.token_logit_scale.grad.abs() > 0
    # past log(100) it is clamped in place (as the trainer clamps logit_scale) and keeps its gradient: a clamp in
    # the graph left it at 100 for good once AdamW had stepped past the bound
    model.zero_grad()
    torch.nn.init.constant_(model.lightclip_train.token_logit_scale, math.log(100) + 1)
    out = model(torch.randn(3, 3, 64, 64), open_clip.get_tokenizer("LightCLIP-Tiny")(["a red circle", "a cat", "x y z"]))
    assert model.lightclip_train.token_logit_scale.item() == pytest.approx(math.log(100))
    loss(**out, output_dict=True)["token_loss"].backward()
    assert model.lightclip_train.token_logit_scale.grad.abs() > 0
    shared = _model_with_heads(mlm=False)
    assert not hasattr(shared.lightclip_train, "token_logit_scale")
    assert "token_logit_scale" not in shared(torch.randn(2, 3, 64, 64), torch.randint(1, 400, (2, 32)))


# --- hard negatives for the token term ------------------------------------------------------------------
def _token_inputs(n=6, patches=5, words=7, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, words, dtype=torch.bool)
    for i in range(n):
        mask[i, 1:1 + (i % (words - 1))] = True  # 0 .. words-2 words: one caption has none
    mask[1, 1:] = True  # more words than patches
    return dict(image_tokens=F.normalize(torch.randn(n, patches, d, generator=g, dtype=torch.float64), dim=-1),
                text_tokens=F.normalize(torch.randn(n, words, d, generator=g, dtype=torch.float64), dim=-1),
                text_mask=mask,
                image_features=F.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1),
                text_features=F.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1))


@pytest.mark.parametrize("mode", ["sinkhorn", "max"])
def test_hard_negatives_with_k_at_least_the_batch_are_the_full_token_term(mode):
    data = _token_inputs()
    grads = []
    for k in (0, 5, 50):  # 0: the full term; 5 = batch - 1 and 50: every negative
        leaves = {key: v.clone().requires_grad_(v.is_floating_point()) for key, v in data.items()}
        loss = LightCLIPLoss(token_weight=1, instance_weight=0, mlm_weight=0, matching=mode, token_negatives=k,
                             progress=_fixed(0))
        value = loss(**leaves, logit_scale=torch.tensor(7.0, dtype=torch.float64), output_dict=True)["token_loss"]
        value.backward()
        grads.append((value.detach(), leaves["image_tokens"].grad, leaves["text_tokens"].grad))
    for value, g_img, g_txt in grads[1:]:
        torch.testing.assert_close(value, grads[0][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_img, grads[0][1], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g_txt, grads[0][2], rtol=1e-9, atol=1e-12)


def test_hard_negatives_score_the_positive_and_the_k_most_similar_by_instance_similarity():
    from open_clip_lightclip.losses.token_matching import token_scores

    data = _token_inputs()
    loss = LightCLIPLoss(token_weight=1, instance_weight=0, mlm_weight=0, matching="max", token_negatives=2, progress=_fixed(0))
    value = loss(**data, logit_scale=torch.tensor(3.0, dtype=torch.float64), output_dict=True)["token_loss"]
    full = token_scores(data["image_tokens"], data["text_tokens"], data["text_mask"], mode="max")  # (images, texts)
    sim = data["image_features"] @ data["text_features"].T
    rows_i2t, rows_t2i = [], []
    for i in range(6):
        others = [j for j in sim[i].argsort(descending=True).tolist() if j != i][:2]  # hardest texts for image i
        rows_i2t.append(full[i, [i, *others]])
        others = [j for j in sim[:, i].argsort(descending=True).tolist() if j != i][:2]  # hardest images for text i
        rows_t2i.append(full[[i, *others], i])
    labels = torch.zeros(6, dtype=torch.long)
    expected = (F.cross_entropy(3.0 * torch.stack(rows_i2t), labels)
                + F.cross_entropy(3.0 * torch.stack(rows_t2i), labels)) / 2
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)

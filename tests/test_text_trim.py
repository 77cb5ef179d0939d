"""Training forward trims each batch to its longest caption: identical outputs and gradients."""
import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss

from open_clip_lightclip.losses.lightclip import LightCLIPLoss
from open_clip_lightclip.models import text_word_mask
from open_clip_lightclip.models.train_heads import LightCLIPTrainCfg, mask_tokens

CAPTIONS = ["a red circle", "a small blue square on a light blue background", "cat"]


def _model(**heads):
    torch.manual_seed(0)
    model = open_clip.create_model("LightCLIP-Tiny", output_dict=True, force_image_size=64)
    if heads:
        model.add_train_heads(LightCLIPTrainCfg(**heads))
        for block in model.lightclip_train.fusion.values() if hasattr(model.lightclip_train, "fusion") else []:
            torch.nn.init.constant_(block.gate, 0.5)  # make fusion matter
    return model.train()


def _grads(model, loss_fn):
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_trimmed_text_tower_is_identical():
    model = _model()
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(CAPTIONS)
    length = int(text.argmax(-1).max()) + 1
    assert length < text.shape[1]  # the test must actually trim
    assert model.text_trim_is_exact()
    full_pooled, full_tokens = model.forward_text(text, trim=False)
    pooled, tokens = model.forward_text(text, trim=True)
    assert tokens.shape == full_tokens.shape
    assert torch.allclose(pooled, full_pooled, atol=1e-5)
    assert torch.allclose(tokens[:, :length], full_tokens[:, :length], atol=1e-5)
    assert not tokens[:, length:].any()


def test_clip_step_gradients_identical_with_and_without_trimming():
    model = _model()
    images = torch.randn(3, 3, 64, 64)
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(CAPTIONS)
    results = []
    for trim in (False, True):
        model.trim_text = trim
        results.append(_grads(model, lambda: ClipLoss()(**model(images, text))))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_lightclip_step_identical_with_and_without_trimming(attention):
    model = _model(token=True, mlm=True, mlm_attention=attention)
    images = torch.randn(3, 3, 64, 64)
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(CAPTIONS)
    mlm_mask = mask_tokens(text, text_word_mask(text), 0.3, generator=torch.Generator().manual_seed(0))
    loss = LightCLIPLoss(token_weight=1, mlm_weight=0.5, progress=type("P", (), {"fraction": 0.5})())
    results = []
    for trim in (False, True):
        model.trim_text = trim

        def step():
            out = model.forward_train(images, text, mlm_mask=mlm_mask)
            return loss(**out, logit_scale=model.logit_scale.exp())

        results.append(_grads(model, step))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name


def test_grad_checkpointing_covers_the_mlm_pass():
    """--grad-checkpointing: the MLM pass through the shared text blocks is checkpointed too (it called the blocks
    directly), with the same loss and gradients."""
    import torch.utils.checkpoint as cp

    model = _model(token=False, mlm=True)
    images = torch.randn(3, 3, 64, 64)
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(CAPTIONS)
    mlm_mask = mask_tokens(text, text_word_mask(text), 0.3, generator=torch.Generator().manual_seed(0))
    loss = LightCLIPLoss(token_weight=0, mlm_weight=0.5, progress=type("P", (), {"fraction": 0.5})())
    calls = []
    original = cp.checkpoint

    def counting(fn, *args, **kw):
        calls.append(fn)
        return original(fn, *args, **kw)

    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        calls.clear()

        def step():
            out = model.forward_train(images, text, mlm_mask=mlm_mask)
            return loss(**out, logit_scale=model.logit_scale.exp())

        import open_clip_lightclip.models.train_heads as heads
        heads.checkpoint = counting
        try:
            results.append(_grads(model, step))
        finally:
            heads.checkpoint = original
        if enable:
            assert len(calls) == len(model.text.transformer.resblocks)  # every block of the MLM pass
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), name

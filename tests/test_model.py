"""LightCLIP model: shapes, dtypes, tokens, upstream API (lock, grad checkpointing, loss dict)."""
import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss

from open_clip_lightclip.models import LightCLIP, text_word_mask

# name -> (embed_dim, token channels C of the last feature map, text width, context length, pooled dim)
CONFIGS = {
    "LightCLIP-MNv3": (512, 960, 512, 77, 1280),
    "LightCLIP-MNv3-S": (512, 576, 512, 77, 1024),
    "LightCLIP-EffB0": (512, 1280, 512, 77, 1280),
    "LightCLIP-Tiny": (128, 288, 128, 32, 1024),
}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: open_clip.create_model(name, force_image_size=64, output_dict=True) for name in CONFIGS}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_and_dtypes(models, name):
    embed_dim, token_dim, width, ctx, pooled_dim = CONFIGS[name]
    model = models[name]
    assert isinstance(model, LightCLIP)
    assert model.visual.proj.in_features == pooled_dim  # head_hidden_size, not num_features
    images = torch.randn(2, 3, 64, 64)
    texts = open_clip.get_tokenizer(name)(["a dog", "a red circle on a white background"])
    assert texts.shape == (2, ctx)
    model.eval()
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(texts)
        assert img.shape == (2, embed_dim) and txt.shape == (2, embed_dim)
        assert img.dtype == txt.dtype == torch.float32
        model.train()
        model.output_tokens = True
        out = model(images, texts)
        model.output_tokens = False
    assert out["image_tokens"].shape == (2, 4, token_dim)  # 64 px / stride 32 = 2x2 patches
    assert out["text_tokens"].shape == (2, ctx, width)
    assert out["text_mask"].dtype == torch.bool and out["text_mask"].shape == (2, ctx)
    assert out["text_mask"].sum(1).tolist() == [2, 7]  # one BPE token per word here
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(2))


def test_word_mask_excludes_sot_eot_and_padding():
    text = torch.tensor([[49406, 320, 1929, 49407, 0, 0], [49406, 49407, 0, 0, 0, 0]])
    assert text_word_mask(text).tolist() == [[False, True, True, False, False, False], [False] * 6]


def test_default_forward_is_exactly_what_clip_loss_takes(models):
    model = models["LightCLIP-Tiny"]
    model.output_dict = True
    model.train()
    images, texts = torch.randn(4, 3, 64, 64), torch.randint(1, 49000, (4, 32))
    out = model(images, texts)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    losses = ClipLoss()(**out, output_dict=True)
    assert set(losses) == {"contrastive_loss"} and losses["contrastive_loss"].requires_grad


def test_training_tokens_only_in_train_mode(models):
    model = models["LightCLIP-Tiny"]
    model.output_dict, model.output_tokens = True, True
    images, texts = torch.randn(2, 3, 64, 64), torch.randint(1, 49000, (2, 32))
    model.eval()
    assert "image_tokens" not in model(images, texts)
    model.train()
    assert "image_tokens" in model(images, texts)
    model.output_tokens = False


def test_lock_image_tower_freezes_trunk_not_projection():
    model = open_clip.create_model("LightCLIP-Tiny")
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.trunk.parameters())
    assert all(p.requires_grad for p in model.visual.proj.parameters())
    model = open_clip.create_model("LightCLIP-Tiny")
    model.lock_image_tower(unlocked_groups=1)
    trainable = {n for n, p in model.visual.trunk.named_parameters() if p.requires_grad}
    assert trainable and trainable != {n for n, _ in model.visual.trunk.named_parameters()}
    assert not any(n.startswith("conv_stem") for n in trainable)


def test_lock_text_tower():
    model = open_clip.create_model("LightCLIP-Tiny")
    model.lock_text_tower()
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.visual.parameters())


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = open_clip.create_model("LightCLIP-Tiny", output_dict=True)
    images, texts = torch.randn(4, 3, 64, 64), torch.randint(1, 49000, (4, 32))

    def grads():
        model.zero_grad()
        loss = ClipLoss()(**model(images, texts))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    loss_a, grads_a = grads()
    model.set_grad_checkpointing(True)
    assert model.text.transformer.grad_checkpointing
    loss_b, grads_b = grads()
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], atol=1e-5), n


def test_no_weight_decay_names_real_parameters():
    model = open_clip.create_model("LightCLIP-Tiny")
    names = dict(model.named_parameters())
    assert model.no_weight_decay() and all(n in names for n in model.no_weight_decay())

"""Today's light towers (issue 15): the new configs, any timm backbone by name, reparameterised export."""
import json

import open_clip
import pytest
import torch

from open_clip_lightclip.cli import main as cli_main
from open_clip_lightclip.models import LightCLIP
from open_clip_lightclip.models.checkpoint import read_state_dict

# name -> (timm trunk, reparameterisable)
NEW = {
    "LightCLIP-MNv4-S": ("mobilenetv4_conv_small", False),
    "LightCLIP-MNv4-M": ("mobilenetv4_conv_medium", False),
    "LightCLIP-RepViT-M0.9": ("repvit_m0_9", True),
    "LightCLIP-MCi0": ("fastvit_mci0", True),
    "LightCLIP-EfficientViT-B0": ("efficientvit_b0", False),
    "LightCLIP-MobileOne-S0": ("mobileone_s0", True),
}


@pytest.mark.parametrize("name", list(NEW))
def test_new_config_builds_trains_with_every_lightclip_term_and_reloads(name, tmp_path):
    from open_clip_lightclip.losses.lightclip import LightCLIPLoss
    from open_clip_lightclip.models.train_heads import LightCLIPTrainCfg

    torch.manual_seed(0)
    model = open_clip.create_model(name, force_image_size=32, output_dict=True)
    assert isinstance(model, LightCLIP) and model.visual.trunk.default_cfg["architecture"] == NEW[name][0]
    assert model.visual.reparameterizable == NEW[name][1]
    model.add_train_heads(LightCLIPTrainCfg(token=True, mlm=True, fusion_layers=(2, 4, 6)))
    images = torch.randn(4, 3, 32, 32)  # a 1x1 last feature map: one patch token per image
    texts = open_clip.get_tokenizer(name)(["a red car", "two dogs", "a blue circle", "a tree"])
    loss = LightCLIPLoss(token_weight=1, mlm_weight=0.5, progress=type("P", (), {"fraction": 0.5})())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    terms = loss(**model(images, texts), output_dict=True)
    assert set(terms) == {"instance_loss", "token_loss", "mlm_loss"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    opt.step()
    assert all(p.grad is not None for p in model.visual.proj.parameters())
    path = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    reloaded = open_clip.create_model(name, pretrained=str(path), force_image_size=32).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(images), model.encode_image(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(reloaded.encode_text(texts), model.encode_text(texts), rtol=0, atol=1e-6)


def test_any_timm_backbone_by_name_round_trips():
    name = "LightCLIP-Tiny+ghostnetv3_100"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    base = open_clip.get_model_config("LightCLIP-Tiny")
    cfg = open_clip.get_model_config(name)
    assert cfg["vision_cfg"]["timm_model_name"] == "ghostnetv3_100"
    assert {k: v for k, v in cfg.items() if k != "vision_cfg"} == {k: v for k, v in base.items() if k != "vision_cfg"}
    assert type(model.visual.trunk).__name__ == "GhostNet" and preprocess.transforms[0].size == 96
    assert open_clip.get_tokenizer(name).context_length == 32  # the base's tokenizer
    assert name in open_clip.list_models()


def test_unknown_timm_backbone_is_one_line_with_the_nearest_names():
    with pytest.raises(ValueError, match=r"timm has no model 'mobilenetv4_small' \(did you mean mobilenetv4_conv_small"):
        open_clip.create_model("LightCLIP-Tiny+mobilenetv4_small")
    with pytest.raises(ValueError, match="'ViT-B-32' is not a LightCLIP config with a timm image tower"):
        open_clip.get_model_config("ViT-B-32+resnet50")


@pytest.mark.parametrize("name", ["LightCLIP-MobileOne-S0"])  # RepViT's fusion: test_bench_inference (towers)
def test_export_fuses_a_reparameterisable_tower_and_reloads_it_fused(name, tmp_path, capsys):
    torch.manual_seed(0)
    model = open_clip.create_model(name, force_image_size=64)
    # a few training steps' worth of batch statistics, so the fused BN is not the identity
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.encode_image(torch.randn(8, 3, 64, 64))
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    assert cli_main(["export", str(ckpt), str(out), "--model", name, "--plugin-format"]) == 0  # fused: plugin layout
    printed = capsys.readouterr().out
    assert "reparameterised the image tower:" in printed and "(<= 1e-4)" in printed
    cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    assert cfg["vision_cfg"]["timm_reparameterized"] is True
    fused = open_clip.create_model(f"local-dir:{out}").eval()
    assert sum(p.numel() for p in fused.visual.parameters()) < sum(p.numel() for p in model.visual.parameters())
    model.eval()
    images = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(fused.encode_image(images, normalize=True), model.encode_image(images, normalize=True),
                                   rtol=0, atol=1e-4)
    exported = read_state_dict(out / "open_clip_model.safetensors")
    assert set(exported) == set(fused.state_dict()) != set(model.state_dict())  # the fused layout, not the trained one


@pytest.mark.slow
@pytest.mark.extended
def test_timm_backbone_by_name_through_the_trainer_export_and_back(train, tmp_path):
    name = "LightCLIP-Tiny+ghostnetv3_100"
    _, ckpt_dir = train(model=name, loss="lightclip", extra=["--force-image-size", "64", "--lightclip-mlm-weight", "0.5"])
    checkpoint = ckpt_dir / "epoch_1.pt"
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint), force_image_size=64)
    out = tmp_path / "exported"
    assert cli_main(["export", str(checkpoint), str(out)]) == 0  # the model name from the run's params.txt
    reloaded = open_clip.create_model(f"local-dir:{out}").eval()
    images, texts = torch.randn(2, 3, 64, 64), open_clip.get_tokenizer(name)(["a cat", "a dog"])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(images), model.encode_image(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(reloaded.encode_text(texts), model.encode_text(texts), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_unknown_timm_backbone_stops_the_trainer_with_one_line(train):
    proc, _ = train(model="LightCLIP-Tiny+mobilenetv4_small", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "did you mean mobilenetv4_conv_small" in errors[0]


@pytest.mark.parametrize("layout", ["NHWC", "tokens"])
def test_patch_tokens_follow_the_trunks_layout(monkeypatch, layout):
    """A BASE+TIMM_NAME trunk may emit NHWC maps or token sequences: the token term gets the same (B, H*W, C)
    patches either way (it misread NHWC maps as NCHW, and failed on sequences)."""
    import open_clip

    torch.manual_seed(0)
    tower = open_clip.create_model("LightCLIP-Tiny", force_image_size=64).visual.eval()
    x = torch.randn(2, 3, 64, 64)
    _, expected = tower.forward_tokens(x)
    nchw = tower.forward_features
    if layout == "NHWC":
        monkeypatch.setattr(tower.trunk, "output_fmt", "NHWC", raising=False)
        monkeypatch.setattr(tower, "forward_features", lambda im: nchw(im).permute(0, 2, 3, 1))
        monkeypatch.setattr(tower, "forward_head", lambda f: f.mean((1, 2)))
    else:
        monkeypatch.setattr(tower.trunk, "num_prefix_tokens", 1, raising=False)
        monkeypatch.setattr(tower, "forward_features", lambda im: torch.cat(
            [torch.zeros(2, 1, nchw(im).shape[1]), nchw(im).flatten(2).transpose(1, 2)], dim=1))
        monkeypatch.setattr(tower, "forward_head", lambda f: f.mean(1))
    assert torch.equal(tower.forward_tokens(x)[1], expected)

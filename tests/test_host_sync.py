"""The default training step makes no data-dependent host-device sync.

Proof by the ``meta`` device: tensors without values, on which every host read of a value (``.item()``,
``int(t)``, ``.tolist()``, ``nonzero``, boolean-mask indexing, a Python ``if`` on a tensor) raises. The models and
losses run forward and backward there exactly as on a GPU. Syncs left by design (Hungarian matching, an online
teacher with another tokenizer) are listed in the README and are not on the default path.
"""
import open_clip
import pytest
import torch

from open_clip_lightclip.losses.cliplite import ClipLiteLoss
from open_clip_lightclip.losses.distill import DistillationLoss
from open_clip_lightclip.losses.lightclip import LightCLIPLoss
from open_clip_lightclip.models.distill_heads import pack_text, unpack_texts
from open_clip_lightclip.models.train_heads import LightCLIPTrainCfg

META = torch.device("meta")
PROGRESS = type("P", (), {"fraction": 0.5, "step": 1, "total_steps": 2})()


def _batch(b=4):
    text = open_clip.get_tokenizer("LightCLIP-Tiny")(["", "a", "a red circle on white", " ".join(["w"] * 40)][:b])
    return torch.randn(b, 3, 64, 64), text


def test_meta_device_refuses_host_reads():
    """The premise: on ``meta`` a value read raises, so a step that completes there read none."""
    x = torch.ones(3, device=META)
    for read in (lambda: x.sum().item(), lambda: x.tolist(), lambda: x.nonzero(), lambda: x[x > 0],
                 lambda: bool(x.sum() > 0)):
        with pytest.raises(Exception):
            read()


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_default_lightclip_step_reads_no_value(precision):
    """LightCLIP-Tiny with the default three terms (instance with soft labels, token by Sinkhorn, MLM with
    fusion): forward, loss, backward on ``meta``."""
    torch.manual_seed(0)
    model = open_clip.create_model("LightCLIP-Tiny", output_dict=True, force_image_size=64)
    model.add_train_heads(LightCLIPTrainCfg())
    model = model.to(META).train()
    images, text = (t.to(META) for t in _batch())
    loss = LightCLIPLoss(token_weight=1.0, mlm_weight=0.5, progress=PROGRESS)
    with torch.autocast("cpu", dtype=precision or torch.bfloat16, enabled=precision is not None):
        out = model(images, text)
        terms = loss(**out, output_dict=True)
    assert set(terms) == {"instance_loss", "token_loss", "mlm_loss"}
    sum(terms.values()).backward()
    assert model.lightclip_train.text_token_proj.weight.grad.device == META


def test_cliplite_and_cached_distillation_read_no_value():
    """CLIP-Lite's JSD (negatives drawn on the host and staged) and distillation from a teacher cache (embeddings
    unpacked from the text field by shape, not by the stored length)."""
    b, d, td = 4, 8, 6
    tokens = open_clip.get_tokenizer("LightCLIP-Tiny")(["a", "b c", "", "d e f"])
    packed = torch.stack([pack_text(tokens[i], torch.randn(2, td)) for i in range(b)])
    ids, _, teachers = unpack_texts(packed.to(META), [td])
    assert ids.shape == tokens.shape and ids.device == META
    image = torch.randn(b, d, device=META, requires_grad=True)
    text = torch.randn(b, d, device=META, requires_grad=True)
    jsd = ClipLiteLoss(seed=0)(image, text, torch.tensor(10.0, device=META), output_dict=True)["cliplite_jsd"]
    (t_image, t_text), = teachers
    proj = torch.nn.Linear(d, td).to(META)
    distill = DistillationLoss(ClipLiteLoss(seed=0), [100.0], affinity_weight=0.0, feature_weight=1.0)
    terms = distill(image, text, torch.tensor(10.0, device=META), output_dict=True,
                    distill_t0_image_features=t_image, distill_t0_text_features=t_text,
                    distill_p0_image_features=proj(image), distill_p0_text_features=proj(text))
    (jsd + sum(terms.values())).backward()
    assert image.grad.device == META


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_reinforced_step_reads_no_value(precision):
    """Training from reinforced shards (``--distill-reinforced``): the batch's text field packs the caption, a
    synthetic caption and the stored teacher rows; the default LightCLIP step plus both distillation terms on the
    real and the synthetic caption (``SyntheticCaptionLoss``), forward and backward on ``meta``."""
    from open_clip_lightclip.losses.synthetic import SyntheticCaptionLoss
    from open_clip_lightclip.models.distill_heads import DistillProjector, attach_distillation

    torch.manual_seed(0)
    td = 6
    model = open_clip.create_model("LightCLIP-Tiny", output_dict=True, force_image_size=64)
    model.add_train_heads(LightCLIPTrainCfg())
    tokenizer = open_clip.get_tokenizer("LightCLIP-Tiny")
    images, text = _batch()
    synthetic = tokenizer(["a b", "c", "d e f g", ""])
    d = model.encode_text(text[:1]).shape[-1]
    attach_distillation(model, None, [td], tokenizer, DistillProjector(d, [td]), synthetic=True)
    packed = torch.stack([pack_text(text[i], torch.randn(3, td), synthetic[i]) for i in range(len(text))])
    model = model.to(META).train()
    base = LightCLIPLoss(token_weight=1.0, mlm_weight=0.5, progress=PROGRESS)
    loss = SyntheticCaptionLoss(DistillationLoss(base, [100.0], affinity_weight=1.0, feature_weight=1.0))
    with torch.autocast("cpu", dtype=precision or torch.bfloat16, enabled=precision is not None):
        terms = loss(**model(images.to(META), packed.to(META)), output_dict=True)
    assert {"synthetic_instance_loss", "synthetic_distill_affinity_loss", "synthetic_distill_feature_loss",
            "token_loss", "mlm_loss"} <= set(terms)
    sum(terms.values()).backward()
    assert model.distill_projector.maps[0]["text"].weight.grad.device == META

"""`--loss cliplite`: the CLIP-Lite JSD loss, its negatives, prior term, distribution and trainer runs."""
import math
from argparse import Namespace

import open_clip
import pytest
import torch
import torch.nn.functional as F

from dist_utils import run_distributed
from open_clip_lightclip.losses import create_loss, get_loss_entry, list_losses
from open_clip_lightclip.losses.cliplite import (
    ClipLiteLoss, build_prior, negative_indices, random_derangement)
from open_clip_lightclip.models import TRAINING_ONLY_MODULES


def sp(x: float) -> float:
    """softplus, by hand."""
    return math.log1p(math.exp(x))


def _features(n=8, d=6, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=gen, dtype=dtype), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=gen, dtype=dtype), dim=-1)
    return img, txt


def _args(**kw):
    base = dict(loss="cliplite", model="LightCLIP-Tiny", seed=0, accum_freq=1, batch_size=8, rank=0, world_size=1,
                local_loss=False, gather_with_grad=False, horovod=False, cliplite_negatives=1,
                cliplite_direction="both", cliplite_prior_weight=0.0, cliplite_prior_on="image",
                cliplite_prior_grad="reverse")
    base.update(kw)
    return Namespace(**base)


# --- values -------------------------------------------------------------------------------------
def test_registered_and_returns_named_term():
    assert "cliplite" in list_losses()
    loss = create_loss("cliplite", _args())
    assert isinstance(loss, ClipLiteLoss)
    img, txt = _features()
    out = loss(img, txt, torch.tensor(10.0), logit_bias=torch.tensor(-3.0), text_tokens=None, output_dict=True)
    assert set(out) == {"cliplite_jsd"} and out["cliplite_jsd"].ndim == 0
    # output_dict=False: the sum of the terms; a fresh loss of the same seed draws the same negatives
    assert torch.equal(create_loss("cliplite", _args())(img, txt, 10.0), out["cliplite_jsd"])


def test_hand_computed_3x3_independent_of_the_derangement():
    # orthonormal pairs: T(pos) = scale, T(neg) = 0 whatever the negative is
    eye = torch.eye(3)
    for seed in range(5):
        value = ClipLiteLoss(seed=seed)(eye, eye, torch.tensor(2.0))
        assert value.item() == pytest.approx(sp(-2.0) + sp(0.0), abs=1e-6)


def test_hand_computed_3x3_both_derangements():
    # images e_0, e_1, e_2; texts g_0 = (1, 0, 0), g_1 = (.6, .8, 0), g_2 = (0, .6, .8); scale 1:
    # S[i, j] = <f_i, g_j> = [[1, .6, 0], [0, .8, .6], [0, 0, .8]], positives (1, .8, .8).
    # The only derangements of 3 are sigma_A = (1, 2, 0) and sigma_B = (2, 0, 1).
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    pos = (sp(-1.0) + 2 * sp(-0.8)) / 3
    i2t = {"A": (2 * sp(0.6) + sp(0.0)) / 3,  # S[0,1], S[1,2], S[2,0] = .6, .6, 0
           "B": sp(0.0)}  # S[0,2], S[1,0], S[2,1] = 0, 0, 0
    t2i = {"A": sp(0.0),  # text i vs image sigma(i): S[1,0], S[2,1], S[0,2] = 0, 0, 0
           "B": (2 * sp(0.6) + sp(0.0)) / 3}  # S[2,0], S[0,1], S[1,2] = 0, .6, .6
    seen = {"image-to-text": set(), "text-to-image": set(), "both": set()}
    for seed in range(40):
        for direction in seen:
            value = ClipLiteLoss(seed=seed, direction=direction)(img, txt, torch.tensor(1.0)).item()
            if direction == "image-to-text":
                expected = {k: pos + v for k, v in i2t.items()}
            elif direction == "text-to-image":
                expected = {k: pos + v for k, v in t2i.items()}
            else:
                expected = {a + b: pos + (i2t[a] + t2i[b]) / 2 for a in "AB" for b in "AB"}
            match = [k for k, v in expected.items() if abs(value - v) < 1e-6]
            assert match, (direction, value, expected)
            seen[direction].add(round(value, 5))
    assert len(seen["image-to-text"]) == len(seen["text-to-image"]) == 2  # both derangements drawn
    assert len(seen["both"]) == 3  # AA and BB give the same value: (i2t + t2i) / 2 is symmetric


def test_k_negatives_equal_the_mean_over_k_explicit_derangements():
    img, txt = _features(n=7)
    scale = torch.tensor(3.0)
    loss = ClipLiteLoss(negatives=3, seed=5)
    gen = loss.step_generator(0)
    idx_i2t, idx_t2i = negative_indices(7, 3, gen), negative_indices(7, 3, gen)
    pos = F.softplus(-scale * (img * txt).sum(-1)).mean()
    neg_i2t = F.softplus(scale * torch.einsum("nd,nkd->nk", img, txt[idx_i2t])).mean()
    neg_t2i = F.softplus(scale * torch.einsum("nd,nkd->nk", txt, img[idx_t2i])).mean()
    torch.testing.assert_close(loss(img, txt, scale), pos + (neg_i2t + neg_t2i) / 2)
    # k = 1 by default; more negatives of the same features change the value
    assert not torch.allclose(ClipLiteLoss(seed=5)(img, txt, scale), loss(img, txt, scale))


def test_negatives_change_every_step_and_repeat_for_accumulation_passes():
    img, txt = _features(n=16)
    loss = ClipLiteLoss(seed=1, calls_per_step=2)
    values = [loss(img, txt, torch.tensor(5.0)).item() for _ in range(6)]
    assert values[0] == values[1] and values[2] == values[3] and values[4] == values[5]
    assert len({values[0], values[2], values[4]}) == 3


def test_gradcheck_float64():
    img, txt = _features(n=6, d=5, dtype=torch.float64)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    for kw in ({}, {"negatives": 3}, {"direction": "image-to-text"}):
        loss = ClipLiteLoss(seed=3, **kw)

        def fn(i, t, s):
            loss.calls = 0  # the same negatives at every evaluation
            return loss(i, t, s)

        assert torch.autograd.gradcheck(fn, (img, txt, scale), eps=1e-6, atol=1e-6)


# --- negatives ----------------------------------------------------------------------------------
def test_derangement_never_pairs_i_with_i():
    for n in (2, 3, 4, 5, 7, 16, 33, 128):
        for seed in range(60):
            gen = torch.Generator().manual_seed(seed)
            perm = random_derangement(n, gen)
            assert sorted(perm.tolist()) == list(range(n))
            assert bool((perm != torch.arange(n)).all())
    # n = 2 has one derangement; n = 3 has two, and both are drawn
    assert random_derangement(2, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    drawn = {tuple(random_derangement(3, torch.Generator().manual_seed(s)).tolist()) for s in range(50)}
    assert drawn == {(1, 2, 0), (2, 0, 1)}


def test_k_negatives_are_distinct_and_never_the_positive():
    for n, k in ((2, 1), (3, 2), (5, 4), (9, 3), (64, 7)):
        for seed in range(30):
            idx = negative_indices(n, k, torch.Generator().manual_seed(seed))
            assert idx.shape == (n, k)
            assert bool((idx != torch.arange(n).unsqueeze(1)).all())
            assert all(len(set(row)) == k for row in idx.tolist())
            assert all(sorted(col) == list(range(n)) for col in idx.T.tolist())  # each column a permutation
    with pytest.raises(ValueError, match="global batch of at least 4"):
        negative_indices(3, 3, torch.Generator())
    with pytest.raises(ValueError, match="at least 2"):
        random_derangement(1, torch.Generator())


# --- prior term ---------------------------------------------------------------------------------
def test_prior_term_off_by_default_and_on_with_weight():
    img, txt = _features(n=8, d=6)
    scale = torch.tensor(5.0)
    plain = ClipLiteLoss(seed=0)(img, txt, scale, output_dict=True)
    assert set(plain) == {"cliplite_jsd"}
    prior = build_prior(6, "image")
    off = ClipLiteLoss(seed=0, prior=prior, prior_weight=0.0)(img, txt, scale, output_dict=True)
    assert set(off) == {"cliplite_jsd"}

    torch.manual_seed(0)
    on = ClipLiteLoss(seed=0, prior=prior, prior_weight=0.1)(img, txt, scale, output_dict=True)
    assert set(on) == {"cliplite_jsd", "cliplite_prior"}
    torch.testing.assert_close(on["cliplite_jsd"], plain["cliplite_jsd"])
    torch.manual_seed(0)
    samples = F.normalize(torch.randn_like(img), dim=-1)  # uniform on the sphere
    disc = prior["image"]
    expected = -(F.logsigmoid(disc(samples)).mean() + torch.log1p(-torch.sigmoid(disc(img))).mean())
    torch.testing.assert_close(on["cliplite_prior"], 0.1 * expected, rtol=1e-5, atol=1e-6)
    assert set(build_prior(6, "both")) == {"image", "text"}


def test_prior_gradients_reverse_versus_shared():
    img, txt = _features(n=8, d=6)
    prior = build_prior(6, "both")
    grads = {}
    for mode in ("reverse", "shared"):
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        prior.zero_grad()
        torch.manual_seed(0)
        ClipLiteLoss(prior=prior, prior_weight=0.1, prior_grad=mode).prior_term(i, t).backward()
        grads[mode] = (i.grad, t.grad, [p.grad.clone() for p in prior.parameters()])
    for a, b in zip(grads["reverse"][2], grads["shared"][2]):
        torch.testing.assert_close(a, b)  # the discriminator always minimises its loss
        assert a.abs().sum() > 0
    torch.testing.assert_close(grads["reverse"][0], -grads["shared"][0])  # embeddings: reversed
    torch.testing.assert_close(grads["reverse"][1], -grads["shared"][1])


# --- trainer flags and model hook ---------------------------------------------------------------
def _parse(argv):
    from open_clip_train.params import parse_args

    return parse_args(["--loss", "cliplite", *argv])


@pytest.mark.parametrize("argv, message", [
    (["--cliplite-negatives", "0"], "--cliplite-negatives must be >= 1, got 0"),
    (["--cliplite-negatives", "8", "--batch-size", "8"], "--cliplite-negatives 8 needs a global batch of more"),
    (["--cliplite-prior-weight", "-1"], "--cliplite-prior-weight must be >= 0"),
    (["--horovod"], "--loss cliplite does not support --horovod"),
    (["--cliplite-direction", "sideways"], "invalid choice: 'sideways'"),
    (["--skip-scheduler"], "--skip-scheduler stops the step count that draws CLIP-Lite's negatives"),
])
def test_check_args_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(["--model", "LightCLIP-Tiny", *argv])
    assert exc.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last_line and message in last_line


def test_flag_defaults_and_prior_attached_to_the_trainer_model():
    args = _parse(["--model", "LightCLIP-Tiny"])
    assert (args.cliplite_negatives, args.cliplite_direction, args.cliplite_prior_weight,
            args.cliplite_prior_on, args.cliplite_prior_grad) == (1, "both", 0.0, "image", "reverse")
    model = open_clip.create_model("LightCLIP-Tiny")  # consumes the pending trainer args
    assert not hasattr(model, "cliplite_prior")

    args = _parse(["--model", "LightCLIP-Tiny", "--cliplite-prior-weight", "0.1", "--cliplite-prior-on", "both",
                   "--batch-size", "4", "--cliplite-negatives", "3", "--accum-freq", "2"])
    model = open_clip.create_model("LightCLIP-Tiny")
    assert "cliplite_prior" in TRAINING_ONLY_MODULES
    assert set(model.cliplite_prior) == {"image", "text"}
    assert model.cliplite_prior["image"].l0.in_features == 128  # the config's embed_dim
    assert any(k.startswith("cliplite_prior.") for k in model.state_dict())
    loss = open_clip.create_loss(args)
    assert loss.prior is model.cliplite_prior and loss.prior_weight == 0.1
    assert (loss.negatives, loss.calls_per_step) == (3, 2)


def test_prior_attached_to_custom_text_models_and_never_to_the_next_model_built():
    """--force-custom-text (and every HF-text / SigLIP config) builds CustomTextCLIP: it gets the prior too,
    and the model built after it (e.g. a --distill-model teacher) does not."""
    args = _parse(["--model", "ViT-S-32-alt", "--force-custom-text", "--cliplite-prior-weight", "0.1"])
    model = open_clip.create_model("ViT-S-32-alt", force_custom_text=True)
    assert type(model).__name__ == "CustomTextCLIP" and isinstance(model, open_clip.CustomTextCLIP)
    assert set(model.cliplite_prior) == {"image"}
    teacher = open_clip.create_model("ViT-S-32-alt")
    assert not hasattr(teacher, "cliplite_prior")
    loss = open_clip.create_loss(args)
    assert loss.prior is model.cliplite_prior and loss.prior_weight == 0.1


def test_configure_model_on_an_upstream_clip():
    args = _args(model="RN50", cliplite_prior_weight=0.1)
    model = torch.nn.Module()  # stands in for RN50: only the config's embed_dim is read
    get_loss_entry("cliplite").configure_model(model, args)
    assert model.cliplite_prior["image"].l0.in_features == open_clip.get_model_config("RN50")["embed_dim"]
    assert create_loss("cliplite", args).prior is model.cliplite_prior


# --- distributed --------------------------------------------------------------------------------
CONFIGS = [  # (local_loss, gather_with_grad, negatives, direction)
    (False, False, 1, "both"),
    (False, True, 1, "both"),
    (True, True, 1, "both"),
    (True, False, 1, "both"),
    (False, True, 3, "text-to-image"),
    (True, True, 2, "both"),
]


def _loss_and_grads(loss, img, txt, scale, steps=2):
    out = []
    for _ in range(steps):
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        s = scale.clone().requires_grad_(True)
        value = loss(i, t, s)
        value.backward()
        out.append((value.detach(), i.grad, t.grad, s.grad))
    return out


class _TwoTower(torch.nn.Module):
    """A stand-in CLIP with the prior discriminator attached as the trainer's hook does."""

    def __init__(self, dim):
        super().__init__()
        self.visual, self.text = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.cliplite_prior = build_prior(dim, "both")

    def forward(self, x, y):
        return {"image_features": F.normalize(self.visual(x), dim=-1),
                "text_features": F.normalize(self.text(y), dim=-1), "logit_scale": self.logit_scale.exp()}


def _ddp_prior_step(rank, world_size, img, txt):
    """Under DDP the discriminator runs in the loss, outside the model's forward: its grads still sync."""
    torch.manual_seed(0)
    model = _TwoTower(img.shape[1]).double()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss = ClipLiteLoss(prior=model.cliplite_prior, prior_weight=0.1, gather_with_grad=True, rank=rank,
                        world_size=world_size)
    n = img.shape[0] // world_size
    torch.manual_seed(rank)  # prior samples differ per rank, as in the trainer
    grads = []
    for _ in range(2):
        ddp.zero_grad()
        sum(loss(**ddp(img[rank * n:(rank + 1) * n], txt[rank * n:(rank + 1) * n]), output_dict=True).values()
            ).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    return grads


def _rank_fn(rank, world_size, img, txt, scale):
    n = img.shape[0] // world_size
    rows = slice(rank * n, (rank + 1) * n)
    results = []
    for local_loss, gather_with_grad, k, direction in CONFIGS:
        loss = ClipLiteLoss(negatives=k, direction=direction, seed=7, local_loss=local_loss,
                            gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)
        results.append(_loss_and_grads(loss, img[rows], txt[rows], scale))
    results.append(_ddp_prior_step(rank, world_size, img, txt))
    return results


def test_two_gloo_processes_equal_one_process_on_the_global_batch():
    img, txt = _features(n=8, d=6, seed=1, dtype=torch.float64)
    scale = torch.tensor(6.0, dtype=torch.float64)
    ranks = run_distributed(_rank_fn, 2, img, txt, scale)
    for c, (local_loss, gather_with_grad, k, direction) in enumerate(CONFIGS):
        single = _loss_and_grads(ClipLiteLoss(negatives=k, direction=direction, seed=7), img, txt, scale)
        for step in range(2):
            value, g_img, g_txt, g_scale = single[step]
            per_rank = [r[c][step] for r in ranks]
            if local_loss:  # each rank averages over its own positives: the mean over ranks is global
                torch.testing.assert_close(sum(r[0] for r in per_rank) / 2, value, rtol=1e-5, atol=1e-5)
            else:
                for r in per_rank:
                    torch.testing.assert_close(r[0], value, rtol=1e-5, atol=1e-5)
            if local_loss and not gather_with_grad:
                continue  # as upstream: no gradient through other ranks' features
            # what DDP applies: the mean over ranks of each rank's gradient
            torch.testing.assert_close(sum(r[3] for r in per_rank) / 2, g_scale, rtol=1e-5, atol=1e-5)
            factor = 2 if gather_with_grad else 1  # without gather_with_grad: upstream ClipLoss semantics
            for rank, r in enumerate(per_rank):
                torch.testing.assert_close(r[1] / factor, g_img[rank * 4:(rank + 1) * 4], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(r[2] / factor, g_txt[rank * 4:(rank + 1) * 4], rtol=1e-5, atol=1e-5)
    # DDP with the discriminator used in the loss: every parameter gets the same (averaged) grad on both ranks
    ddp = [r[len(CONFIGS)] for r in ranks]
    for step in range(2):
        assert ddp[0][step].keys() == ddp[1][step].keys()
        for name, grad in ddp[0][step].items():
            torch.testing.assert_close(grad, ddp[1][step][name])
            assert grad.abs().sum() > 0, name


# --- the real trainer ---------------------------------------------------------------------------
@pytest.mark.slow
def test_trainer_lightclip_mnv3_accum_prior_and_val(train, tiny_shards):
    proc, ckpt_dir = train(
        model="LightCLIP-MNv3", loss="cliplite", batch_size=16,  # 2 batches of 16: one optimizer step
        extra=["--force-image-size", "64", "--accum-freq", "2", "--cliplite-prior-weight", "0.1",
               "--val-data", tiny_shards, "--val-num-samples", "16"])
    log = (ckpt_dir.parent / "out.log").read_text()
    assert "Cliplite_jsd" in log and "Cliplite_prior" in log and "[32/32 (100%)]" in log
    assert "clip_val_loss" in log and "image_to_text_mean_rank" in log
    sd = torch.load(ckpt_dir / "epoch_1.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("cliplite_prior.image.") for k in sd)
    # at inference a CLIP-Lite model is a plain CLIP: the checkpoint loads without the discriminator
    model = open_clip.create_model("LightCLIP-MNv3", pretrained=str(ckpt_dir / "epoch_1.pt"), force_image_size=64)
    assert not hasattr(model, "cliplite_prior")


@pytest.mark.slow
def test_trainer_upstream_model(train):
    # an upstream open_clip.CLIP (ViT tower); RN50 works too but takes minutes on a shared 2-core CPU
    proc, ckpt_dir = train(model="ViT-S-32-alt", loss="cliplite", batch_size=16,
                           extra=["--force-image-size", "64", "--cliplite-negatives", "2"])
    log = (ckpt_dir.parent / "out.log").read_text()
    assert "Cliplite_jsd" in log and "Cliplite_prior" not in log and "[32/32 (100%)]" in log
    assert (ckpt_dir / "epoch_1.pt").is_file()

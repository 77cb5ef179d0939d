"""Every term scales the same way with the number of processes (README "Distributed semantics").

For each combination of ``--gather-with-grad`` x ``--local-loss`` and every term (LightCLIP's instance,
token and MLM terms, CLIP-Lite's JSD and prior terms), 2 gloo processes x B are compared with 1 process
x 2B: the gradient DDP applies (the mean over ranks) is ``fraction`` x the single-process gradient, with
the same ``fraction`` for every term: 1/W with neither flag (upstream ``ClipLoss``'s own), else 1. With
``--local-loss`` alone the contrastive terms keep only their anchor paths, as ``ClipLoss`` does (checked
against ``ClipLoss`` itself and by hand); the per-rank terms are exact there.
"""
from types import SimpleNamespace

import pytest
import torch

from dist_utils import run_distributed
from test_lightclip_distributed import _global_batch
from open_clip_lightclip.losses.cliplite import ClipLiteLoss, build_prior
from open_clip_lightclip.losses.lightclip import LightCLIPLoss, _symmetric_ce
from open_clip_lightclip.losses.token_matching import token_scores

W = 2
COMBOS = [(False, False), (True, False), (True, True), (False, True)]  # (gather_with_grad, local_loss)
TERMS = ("instance", "token", "mlm", "jsd", "prior")
KEYS = ("image_features", "text_features", "image_tokens", "text_tokens", "mlm_loss_sum")
PROGRESS = SimpleNamespace(fraction=0.5, step=1, total_steps=2)


def _data():
    return _global_batch(n=8, d=6, patches=4, words=7, td=5, seed=3, dtype=torch.float64)


def _term(term, rank, world, gather_with_grad, local_loss, part):
    flags = dict(rank=rank, world_size=world, gather_with_grad=gather_with_grad, local_loss=local_loss)
    scale = torch.tensor(6.0, dtype=torch.float64)
    if term in ("instance", "token", "mlm", "token_hard", "token_local"):
        weights = {t: float(term.startswith(t)) for t in ("instance", "token", "mlm")}
        loss = LightCLIPLoss(instance_weight=weights["instance"], token_weight=weights["token"],
                             mlm_weight=weights["mlm"], soft_label_max=0.2, matching="sinkhorn", progress=PROGRESS,
                             token_negatives=50 if term == "token_hard" else 0,
                             token_scope="local" if term == "token_local" else "global", **flags)
        return loss(**part, logit_scale=scale, output_dict=True)[f"{term.split('_')[0]}_loss"]
    if term == "jsd":
        return ClipLiteLoss(seed=7, **flags)(part["image_features"], part["text_features"], scale, output_dict=True)[
            "cliplite_jsd"]
    torch.manual_seed(0)
    prior = build_prior(part["image_features"].shape[1], "both").double()
    loss = ClipLiteLoss(prior=prior, prior_weight=1.0, **flags)
    return loss.prior_term(part["image_features"], part["text_features"]) if world == 1 else \
        loss(part["image_features"], part["text_features"], scale, output_dict=True)["cliplite_prior"]


def _piece(data, rank, world):
    n = data["image_features"].shape[0] // world
    return {k: v[rank * n:(rank + 1) * n].clone() for k, v in data.items()}


def _grads(term, rank, world, gather_with_grad, local_loss, data):
    n = data["image_features"].shape[0] // world
    part = {k: v[rank * n:(rank + 1) * n].clone() for k, v in data.items()}
    for k in KEYS:
        part[k].requires_grad_(True)
    value = _term(term, rank, world, gather_with_grad, local_loss, part)
    value.backward()
    return value.detach(), {k: part[k].grad for k in KEYS if part[k].grad is not None}


def _rank_fn(rank, world, data):
    out = {}
    for gwg, local in COMBOS:
        for term in TERMS:
            out[(gwg, local, term)] = _grads(term, rank, world, gwg, local, data)
        for piece in range(world):  # the local token scope on each rank's own batch, in one process
            out[("token_local_ref", piece)] = _grads("token_local", 0, 1, False, False, _piece(data, piece, world))
        for gwg2, local2 in COMBOS:
            out[(gwg2, local2, "token_local")] = _grads("token_local", rank, world, gwg2, local2, data)
        if not gwg and local:  # upstream's ClipLoss under the same flags, for the instance term
            from open_clip.loss import ClipLoss

            n = data["image_features"].shape[0] // world
            img = data["image_features"][rank * n:(rank + 1) * n].clone().requires_grad_(True)
            txt = data["text_features"][rank * n:(rank + 1) * n].clone().requires_grad_(True)
            ClipLoss(local_loss=True, gather_with_grad=False, rank=rank, world_size=world)(
                img, txt, torch.tensor(6.0, dtype=torch.float64)).backward()
            out["cliploss"] = {"image_features": img.grad, "text_features": txt.grad}
    return out


@pytest.fixture(scope="module")
def results():
    data = _data()
    return data, run_distributed(_rank_fn, W, data)


def _applied(ranks, key, name):
    """What DDP applies to the parameters upstream of ``name``: each rank's gradient, averaged over ranks."""
    return torch.cat([r[key][1][name] for r in ranks]) / W


@pytest.mark.parametrize("gather_with_grad, local_loss", COMBOS[:3])
@pytest.mark.parametrize("term", TERMS)
def test_every_term_is_the_same_fraction_of_the_single_process_gradient(results, term, gather_with_grad, local_loss):
    data, ranks = results
    value, single = _grads(term, 0, 1, False, False, data)
    fraction = 1 / W if not (gather_with_grad or local_loss) else 1.0
    key = (gather_with_grad, local_loss, term)
    for name, grad in single.items():
        torch.testing.assert_close(_applied(ranks, key, name), fraction * grad, rtol=1e-7, atol=1e-9, msg=name)
    if term != "prior":  # the prior's samples are each rank's own: its value is a per-rank estimate
        logged = torch.stack([r[key][0] for r in ranks])
        # each rank logs the global value; under --local-loss a contrastive term's rows are its own: the mean is
        per_rank_rows = local_loss and term != "mlm"
        torch.testing.assert_close(logged.mean() if per_rank_rows else logged[0], value, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("gather_with_grad, local_loss", COMBOS)
def test_local_token_scope_scales_like_the_instance_term(results, gather_with_grad, local_loss):
    """--lightclip-token-scope local: each rank's own batch is its term; after DDP's averaging its gradient is the
    same fraction of the one-process gradient of those per-rank terms (averaged) as the instance term's, so it
    does not grow W-fold against the instance term under the default flags (it did: 1.0 where the instance
    term had 1/W)."""
    _, ranks = results
    fraction = 1 / W if not (gather_with_grad or local_loss) else 1.0
    for name in ("image_tokens", "text_tokens"):
        reference = torch.cat([ranks[0][("token_local_ref", r)][1][name] for r in range(W)]) / W
        torch.testing.assert_close(_applied(ranks, (gather_with_grad, local_loss, "token_local"), name),
                                   fraction * reference, rtol=1e-7, atol=1e-9, msg=name)


def test_mlm_value_logged_on_every_rank_is_the_global_mean(results):
    data, ranks = results
    value, _ = _grads("mlm", 0, 1, False, False, data)
    for combo in COMBOS:
        for r in ranks:
            torch.testing.assert_close(r[(*combo, "mlm")][0], value)


def test_local_loss_alone_keeps_the_anchor_paths_as_cliploss_does(results):
    data, ranks = results
    n = data["image_features"].shape[0] // W
    # instance term (soft labels at t=0.5 spread uniformly) against ClipLoss: same gradient paths; compare e=0 by hand
    for rank, r in enumerate(ranks):
        assert set(r[(False, True, "instance")][1]) == {"image_features", "text_features"}
        assert r["cliploss"]["image_features"].abs().sum() > 0
    # by hand: rank r's rows, candidates of every rank as constants; DDP's mean over ranks
    expected = {k: torch.zeros_like(data[k]) for k in ("image_tokens", "text_tokens")}
    for rank in range(W):
        rows = slice(rank * n, (rank + 1) * n)
        img = data["image_tokens"][rows].clone().requires_grad_(True)
        txt = data["text_tokens"][rows].clone().requires_grad_(True)
        s_i2t = token_scores(img, data["text_tokens"], data["text_mask"], mode="sinkhorn", eps=0.05, iters=10)
        s_t2i = token_scores(data["image_tokens"], txt, data["text_mask"][rows], mode="sinkhorn", eps=0.05, iters=10).T
        labels = torch.arange(n) + rank * n
        _symmetric_ce(6.0 * s_i2t, 6.0 * s_t2i, labels).backward()
        expected["image_tokens"][rows], expected["text_tokens"][rows] = img.grad / W, txt.grad / W
    for name in ("image_tokens", "text_tokens"):
        torch.testing.assert_close(_applied(ranks, (False, True, "token"), name), expected[name], rtol=1e-6, atol=1e-9)
    # per-rank terms are exact under --local-loss alone
    for term in ("mlm", "prior"):
        _, single = _grads(term, 0, 1, False, False, data)
        for name, grad in single.items():
            torch.testing.assert_close(_applied(ranks, (False, True, term), name), grad, rtol=1e-7, atol=1e-9)


def test_instance_term_with_hard_labels_is_cliploss_under_local_loss_alone():
    """Same flag, same meaning: e = 0 gives exactly ClipLoss's per-rank gradients."""
    data = _data()
    ranks = run_distributed(_cliploss_pair, W, data)
    for r in ranks:
        for name in ("image_features", "text_features"):
            torch.testing.assert_close(r[0][name], r[1][name], rtol=1e-9, atol=1e-12)


def _cliploss_pair(rank, world, data):
    from open_clip.loss import ClipLoss

    n = data["image_features"].shape[0] // world
    out = []
    for make in (lambda: LightCLIPLoss(token_weight=0, mlm_weight=0, soft_label_max=0, progress=PROGRESS,
                                       local_loss=True, rank=rank, world_size=world),
                 lambda: ClipLoss(local_loss=True, rank=rank, world_size=world)):
        img = data["image_features"][rank * n:(rank + 1) * n].clone().requires_grad_(True)
        txt = data["text_features"][rank * n:(rank + 1) * n].clone().requires_grad_(True)
        make()(img, txt, torch.tensor(6.0, dtype=torch.float64)).backward()
        out.append({"image_features": img.grad, "text_features": txt.grad})
    return out


def _hard_rank_fn(rank, world, data):
    return {combo: _grads("token_hard", rank, world, *combo, data) for combo in COMBOS[1:3]}


def test_hard_negative_token_term_is_exact_with_gather_with_grad():
    """--lightclip-token-negatives K (K >= global batch: every negative) under DDP with --gather-with-grad:
    the applied gradient is the single-process full token term's."""
    data = _data()
    ranks = run_distributed(_hard_rank_fn, W, data)
    _, single = _grads("token", 0, 1, False, False, data)
    for combo in COMBOS[1:3]:
        for name, grad in single.items():
            torch.testing.assert_close(torch.cat([r[combo][1][name] for r in ranks]) / W, grad, rtol=1e-7, atol=1e-9)

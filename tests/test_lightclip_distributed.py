"""Two gloo processes x B equal one process x 2B for every LightCLIP term (values and gradients)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dist_utils import run_distributed
from open_clip_lightclip.losses.lightclip import LightCLIPLoss

GRAD_KEYS = ("image_features", "text_features", "image_tokens", "text_tokens", "mlm_loss_sum")


def _global_batch(n=8, d=16, patches=4, words=9, td=8, seed=0, dtype=torch.float32):
    """What a LightCLIP model's training forward gives the loss, for ``n`` samples (random, normalised)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, words, dtype=torch.bool)
    for i in range(n):
        mask[i, 1:2 + i % (words - 2)] = True
    return {
        "image_features": F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1),
        "text_features": F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1),
        "image_tokens": F.normalize(torch.randn(n, patches, td, generator=g, dtype=dtype), dim=-1),
        "text_tokens": F.normalize(torch.randn(n, words, td, generator=g, dtype=dtype), dim=-1),
        "text_mask": mask,
        "mlm_loss_sum": torch.rand(n, generator=g, dtype=dtype) * 5,
        "mlm_count": torch.randint(1, 4, (n,), generator=g).to(dtype),
    }


def _terms(rank, world_size, data, options):
    per_rank = data["image_features"].shape[0] // world_size
    part = {k: v[rank * per_rank:(rank + 1) * per_rank].clone() for k, v in data.items()}
    for k in GRAD_KEYS:
        part[k].requires_grad_(True)
    weights = {"token_weight": 1, "mlm_weight": 0.5, **options}  # every term unless the case turns one off
    loss = LightCLIPLoss(rank=rank, world_size=world_size, gather_with_grad=True,
                         progress=SimpleNamespace(fraction=0.5, step=1, total_steps=2), **weights)
    terms = loss(**part, logit_scale=torch.tensor(10.0), output_dict=True)
    sum(terms.values()).backward()
    return {k: v.detach() for k, v in terms.items()}, {k: part[k].grad for k in GRAD_KEYS}


@pytest.mark.parametrize("options", [
    dict(local_loss=False, matching="sinkhorn", soft_label_spread="uniform"),
    dict(local_loss=True, matching="max", soft_label_spread="similarity"),
])
def test_two_processes_equal_one_process(options):
    data = _global_batch()
    single_terms, single_grads = _terms(0, 1, data, options)
    results = run_distributed(_terms, 2, data, options)
    assert set(single_terms) == {"instance_loss", "token_loss", "mlm_loss"}
    for name, value in single_terms.items():
        mean = sum(r[0][name] for r in results) / 2  # what DDP optimises: the mean over ranks
        assert torch.allclose(mean, value, atol=1e-5), name
    for key in GRAD_KEYS:
        # DDP averages parameter gradients over ranks: per-rank gradients / world size
        dist_grad = torch.cat([r[1][key] for r in results]) / 2
        assert torch.allclose(dist_grad, single_grads[key], atol=1e-5), key


def test_local_token_scope_uses_each_ranks_batch_only():
    data = _global_batch()
    options = dict(instance_weight=0.0, mlm_weight=0.0, token_scope="local", matching="max")
    results = run_distributed(_terms, 2, data, options)
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in data.items()} for i in range(2)]
    for rank, half in enumerate(halves):
        single_terms, single_grads = _terms(0, 1, half, options)
        assert torch.allclose(results[rank][0]["token_loss"], single_terms["token_loss"], atol=1e-6)
        assert torch.allclose(results[rank][1]["image_tokens"], single_grads["image_tokens"], atol=1e-6)

"""`--loss` routes through one registry; `clip` / `siglip` give upstream's numbers."""
from argparse import Namespace

import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss, SigLipLoss

from open_clip_lightclip.losses import create_loss, list_losses, register_loss


def _args(**kw):
    base = dict(distill=False, model="LightCLIP-Tiny", siglip=False, local_loss=False, gather_with_grad=False,
                rank=0, world_size=1, horovod=False, loss_dist_impl=None, loss=None)
    base.update(kw)
    return Namespace(**base)


def _features(n=6, d=8):
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    return img, txt


def test_registry_names():
    assert {"clip", "siglip"} <= set(list_losses())


def test_no_loss_flag_is_upstream_create_loss():
    loss = open_clip.create_loss(_args())
    assert type(loss) is ClipLoss
    assert open_clip.create_loss is open_clip.factory.create_loss
    assert open_clip.create_loss.__wrapped__.__module__ == "open_clip.factory"


def test_clip_matches_upstream_numbers():
    img, txt = _features()
    scale = torch.tensor(10.0)
    ours = open_clip.create_loss(_args(loss="clip"))(img, txt, scale, output_dict=True)
    upstream = ClipLoss()(img, txt, scale, output_dict=True)
    assert ours.keys() == upstream.keys() == {"contrastive_loss"}
    assert torch.equal(ours["contrastive_loss"], upstream["contrastive_loss"])


def test_siglip_matches_upstream_numbers():
    img, txt = _features()
    args = _args(loss="siglip")
    loss = open_clip.create_loss(args)
    assert type(loss) is SigLipLoss and args.siglip
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    assert torch.equal(loss(img, txt, scale, bias), SigLipLoss()(img, txt, scale, bias))


def test_unknown_name_and_custom_registration():
    with pytest.raises(ValueError, match="unknown loss 'nope'; choose one of: clip, siglip"):
        create_loss("nope", _args())

    @register_loss("test-constant")
    def _factory(args):
        return torch.nn.Identity()

    try:
        assert isinstance(open_clip.create_loss(_args(loss="test-constant")), torch.nn.Identity)
    finally:
        from open_clip_lightclip.losses import registry

        registry._LOSSES.pop("test-constant")

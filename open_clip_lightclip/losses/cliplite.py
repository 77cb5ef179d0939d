"""CLIP-Lite: the Jensen-Shannon mutual-information bound with one negative per positive.

Shrivastava et al., "CLIP-Lite: Information Efficient Visual Representation Learning with
Language Supervision" (arXiv 2112.07133; reference code 4m4n5/CLIP-Lite).

With L2-normalised image / text embeddings ``f_i``, ``g_i`` and the model's learnable
temperature (``logit_scale = exp(tau)``), the critic is ``T(x, y) = exp(tau) * <f(x), g(y)>``
and the loss is the negative JSD lower bound on their mutual information::

    L_jsd = E_pos[softplus(-T(f_i, g_i))] + E_neg[softplus(T(f_i, g_sigma(i)))]

where ``sigma`` is a random derangement of the *global* (gathered) batch, so every positive
gets exactly one negative (``--cliplite-negatives k`` draws k distinct ones, for ablations).
Both directions are used by default: image->text negatives ``(f_i, g_sigma(i))`` and
text->image negatives ``(g_i, f_rho(i))`` with an independent derangement ``rho``; the two
negative expectations are averaged. No ``N x N`` similarity matrix is ever formed: the cost
is linear in the global batch size.

The optional prior-matching term of the reference code (weight 0.1 there, off here by
default) trains a small discriminator ``D`` (``model.cliplite_prior``, training-only) to tell
embeddings from samples ``p`` of a prior::

    L_prior = weight * (E_p[softplus(-D(p))] + E_f[softplus(D(f))])
            = weight * -(E log sigmoid(D(p)) + E log(1 - sigmoid(D(f))))

Our embeddings live on the unit sphere, so the prior is uniform on the sphere (the reference
draws ``torch.rand`` in the unit cube for unnormalised features).
"""
import argparse
import logging
import os
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import local_term_scale, with_value
from .flags import finite_float
from .registry import register_loss
from .progress import PROGRESS

__all__ = [
    "ClipLiteLoss", "PriorDiscriminator", "random_derangement", "negative_indices", "jsd_loss",
    "PRIOR_MODULE_NAME",
]

PRIOR_MODULE_NAME = "cliplite_prior"  # listed in open_clip_lightclip.models.registry.TRAINING_ONLY_MODULES
DIRECTIONS = ("both", "image-to-text", "text-to-image")
PRIOR_ON = ("image", "text", "both")
PRIOR_GRAD = ("reverse", "shared")

# Discriminators built by ``configure_model`` for the trainer's args, handed to the loss the
# factory builds from the same args (keyed by ``id(args)``; argparse.Namespace is unhashable).
_PENDING_PRIORS: Dict[int, nn.Module] = {}


# --- negatives ---------------------------------------------------------------------------------
def random_derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` with no fixed point (``perm[i] != i``).

    Rejection sampling of ``torch.randperm``: about e ~ 2.72 tries on average, deterministic
    given the generator's state. Needs ``n >= 2``.
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {n}")
    arange = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == arange).any()):
            return perm


def negative_indices(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, k)`` indices of k distinct negatives for each of ``n`` positives, never ``i`` itself.

    ``k == 1``: a uniformly random derangement. ``k > 1``: ``pi(pi^-1(i) + s_j mod n)`` for a
    random permutation ``pi`` and k distinct random offsets ``s_j`` in ``[1, n)``: each column is
    a derangement (a random n-cycle conjugated by ``pi``) and the k columns differ in every row.
    Needs ``1 <= k < n``.
    """
    if not 1 <= k < n:
        raise ValueError(f"{k} negative(s) per positive need a global batch of at least {k + 1}, got {n}")
    if k == 1:
        return random_derangement(n, generator).unsqueeze(1)
    perm = torch.randperm(n, generator=generator)
    offsets = torch.randperm(n - 1, generator=generator)[:k] + 1
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    return perm[(inverse.unsqueeze(1) + offsets.unsqueeze(0)) % n]


def jsd_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Negative JSD MI bound on critic values: ``mean(softplus(-pos)) + mean(softplus(neg))``."""
    return F.softplus(-pos).mean() + F.softplus(neg).mean()


# --- prior matching ----------------------------------------------------------------------------
class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class PriorDiscriminator(nn.Module):
    """The reference code's prior discriminator: MLP ``dim -> 1000 -> 200 -> 1`` (ReLU), one logit."""

    def __init__(self, dim: int, hidden: tuple = (1000, 200)):
        super().__init__()
        self.l0 = nn.Linear(dim, hidden[0])
        self.l1 = nn.Linear(hidden[0], hidden[1])
        self.l2 = nn.Linear(hidden[1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(self.l1(F.relu(self.l0(x))))).squeeze(-1)


def build_prior(dim: int, prior_on: str = "image") -> nn.ModuleDict:
    """``nn.ModuleDict`` with one ``PriorDiscriminator`` per embedding kind the prior applies to."""
    kinds = ("image", "text") if prior_on == "both" else (prior_on,)
    return nn.ModuleDict({kind: PriorDiscriminator(dim) for kind in kinds})


# --- the loss ----------------------------------------------------------------------------------
class ClipLiteLoss(nn.Module):
    """CLIP-Lite JSD loss with one (or k) negatives per positive from the global batch.

    Called as OpenCLIP calls its losses, ``loss(image_features, text_features, logit_scale,
    output_dict=True)``, on L2-normalised features; extra model outputs are ignored. Returns
    ``{"cliplite_jsd": L_jsd}`` plus ``{"cliplite_prior": L_prior}`` when a prior
    discriminator is given and ``prior_weight > 0`` (see the module docstring for formulas).

    Distributed as OpenCLIP's ``ClipLoss``: features are gathered from all ranks (with
    gradients when ``gather_with_grad``); with ``local_loss`` each rank averages over its own
    positives only. The negatives are a derangement of the global batch drawn from a
    generator seeded with ``(seed, step)``, so all ranks draw the same one; ``step`` is the
    trainer's optimizer step (``progress``, so a resumed run continues the sequence) or, outside
    the trainer, counts calls, ``calls_per_step`` of them per optimizer step (``--accum-freq``);
    either way the accumulation passes of one step share their negatives.

    Args:
        negatives: negatives per positive (k), distinct and never the positive itself.
        direction: ``"both"``, ``"image-to-text"`` (image anchors, text negatives) or ``"text-to-image"``.
        prior: the discriminator(s) from :func:`build_prior` (kept on the model as ``cliplite_prior``).
        prior_weight: weight of the prior term (0 = off).
        prior_grad: ``"reverse"``: the embeddings get the reversed discriminator gradient, i.e. they
            are pushed to look like the prior (minimax); ``"shared"``: embeddings and discriminator
            minimise the same term (the reference code's single-optimizer update).
        seed: base seed of the negatives' generator (the trainer's ``--seed``).
    """

    def __init__(
            self,
            negatives: int = 1,
            direction: str = "both",
            prior: Optional[nn.Module] = None,
            prior_weight: float = 0.0,
            prior_grad: str = "reverse",
            seed: int = 0,
            calls_per_step: int = 1,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            rank: int = 0,
            world_size: int = 1,
            progress=None,
    ):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if prior_grad not in PRIOR_GRAD:
            raise ValueError(f"prior_grad must be one of {PRIOR_GRAD}, got {prior_grad!r}")
        self.negatives = negatives
        self.direction = direction
        self.prior = prior
        self.prior_weight = prior_weight
        self.prior_grad = prior_grad
        self.seed = seed
        self.calls_per_step = max(1, calls_per_step)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size
        self.calls = 0
        self.last_step = 0  # the step of the latest forward: its negatives serve that step's caption_terms
        self.progress = progress  # the trainer's step (open_clip_lightclip.losses.progress.PROGRESS), when it runs

    def step_generator(self, step: int) -> torch.Generator:
        """CPU generator for the negatives of optimizer step ``step`` (same on every rank)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2 ** 63))

    def _gather(self, image_features: torch.Tensor, text_features: torch.Tensor):
        if self.world_size == 1:
            return image_features, text_features
        from open_clip.loss import gather_features

        return gather_features(
            image_features, text_features, local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
            rank=self.rank, world_size=self.world_size, use_horovod=False)

    def jsd(self, image_features, text_features, logit_scale, generator: torch.Generator) -> torch.Tensor:
        """``L_jsd`` on this rank's features (global negatives; local positives with ``local_loss``)."""
        all_image, all_text = self._gather(image_features, text_features)
        n_global = all_image.shape[0]
        if self.world_size > 1 and self.local_loss:
            n_local = image_features.shape[0]
            rows = torch.arange(self.rank * n_local, (self.rank + 1) * n_local)
            anchor_image, anchor_text = image_features, text_features
        else:
            rows = None
            anchor_image, anchor_text = all_image, all_text

        pos = logit_scale * (anchor_image * anchor_text).sum(-1)
        negs = []
        for anchors, others, name in ((anchor_image, all_text, "image-to-text"),
                                      (anchor_text, all_image, "text-to-image")):
            # draw both directions always, so the flag does not change the other's negatives
            idx = negative_indices(n_global, self.negatives, generator)
            if self.direction not in ("both", name):
                continue
            if rows is not None:
                idx = idx[rows]
            idx = idx.to(anchors.device, non_blocking=True)  # drawn on the host: staged, no wait for the device
            neg = logit_scale * (anchors.unsqueeze(1) * others[idx]).sum(-1)  # (rows, k)
            negs.append(F.softplus(neg).mean())
        return F.softplus(-pos).mean() + torch.stack(negs).mean()

    def prior_term(self, image_features, text_features) -> torch.Tensor:
        """``L_prior`` (unweighted) on this rank's embeddings; prior samples from the global RNG."""
        total = 0.0
        for kind, disc in self.prior.items():
            emb = image_features if kind == "image" else text_features
            emb = emb.to(next(disc.parameters()).dtype)
            prior = F.normalize(torch.randn_like(emb), dim=-1)
            if self.prior_grad == "reverse":
                emb = _GradReverse.apply(emb)
            total = total + F.softplus(-disc(prior)).mean() + F.softplus(disc(emb)).mean()
        return total

    def caption_terms(self, image_features, text_features, logit_scale, **unused):
        """The terms one more caption per image adds (``losses.synthetic``): the JSD term, with the negatives of the
        step the latest forward drew (the prior judges the embeddings once, on the real caption)."""
        return {"cliplite_jsd": self.jsd(image_features, text_features, logit_scale,
                                         self.step_generator(self.last_step))}

    def forward(
            self,
            image_features: torch.Tensor,
            text_features: torch.Tensor,
            logit_scale: Union[torch.Tensor, float],
            output_dict: bool = False,
            **unused,
    ):
        if self.progress is not None and self.progress.total_steps:
            step = self.progress.step  # the trainer's optimizer step: right after --resume too
        else:
            step = self.calls // self.calls_per_step
        self.calls += 1
        self.last_step = step
        losses = {"cliplite_jsd": self.jsd(image_features, text_features, logit_scale, self.step_generator(step))}
        if self.prior is not None and self.prior_weight > 0:
            prior = self.prior_weight * self.prior_term(image_features, text_features)
            # same fraction of its single-process gradient as the JSD term under DDP (see losses/distributed.py)
            scale = local_term_scale(self.world_size, self.local_loss, self.gather_with_grad)
            losses["cliplite_prior"] = prior if scale == 1.0 else with_value(scale * prior, prior)
        if output_dict:
            return losses
        return sum(losses.values())


# --- trainer integration -----------------------------------------------------------------------
def _add_args(group) -> None:
    group.add_argument(
        "--cliplite-negatives", type=int, default=1, metavar="K",
        help="CLIP-Lite: negatives per positive, drawn from a derangement of the global batch (default: 1).")
    group.add_argument(
        "--cliplite-direction", type=str, default="both", choices=DIRECTIONS,
        help="CLIP-Lite: which anchors get negatives: both (default), image-to-text, text-to-image.")
    group.add_argument(
        "--cliplite-prior-weight", type=finite_float, default=0.0, metavar="W",
        help="CLIP-Lite: weight of the prior-matching term (default: 0 = off; the reference code uses 0.1).")
    group.add_argument(
        "--cliplite-prior-on", type=str, default="image", choices=PRIOR_ON,
        help="CLIP-Lite: embeddings matched to the prior: image (default, as the reference code), text, both.")
    group.add_argument(
        "--cliplite-prior-grad", type=str, default="reverse", choices=PRIOR_GRAD,
        help="CLIP-Lite: reverse (default): embeddings are pushed towards the prior (minimax); shared: "
             "embeddings and discriminator minimise the same term, as the reference code's single optimizer.")


def _inactive_args(args: argparse.Namespace) -> Dict[str, str]:
    """The prior's shape flags while the prior term is off: they train nothing."""
    why = "while the prior term is off (--cliplite-prior-weight 0)"
    return {name: why for name in ("cliplite_prior_on", "cliplite_prior_grad")} if args.cliplite_prior_weight == 0 \
        else {}


def _check_args(args: argparse.Namespace) -> None:
    if getattr(args, "horovod", False):
        raise ValueError("--loss cliplite does not support --horovod; use torchrun / srun (torch.distributed)")
    if getattr(args, "skip_scheduler", False):
        raise ValueError("--skip-scheduler stops the step count that draws CLIP-Lite's negatives; drop it "
                         "(--lr-scheduler const keeps the learning rate constant)")
    if args.cliplite_negatives < 1:
        raise ValueError(f"--cliplite-negatives must be >= 1, got {args.cliplite_negatives}")
    # the trainer sets args.world_size later; torchrun / srun announce it in the environment
    world_size = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    global_batch = args.batch_size * args.accum_freq * world_size
    if args.cliplite_negatives >= global_batch:
        raise ValueError(f"--cliplite-negatives {args.cliplite_negatives} needs a global batch of more than "
                         f"{args.cliplite_negatives} samples (got {global_batch}); lower it or raise --batch-size")
    if not args.cliplite_prior_weight >= 0:
        raise ValueError(f"--cliplite-prior-weight must be >= 0, got {args.cliplite_prior_weight}")


def _embed_dim(model: nn.Module, args) -> int:
    from open_clip import get_model_config

    cfg = get_model_config(args.model) if isinstance(getattr(args, "model", None), str) else None
    if cfg and "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    for owner in (model, getattr(model, "visual", None)):
        for attr in ("embed_dim", "output_dim"):
            if isinstance(getattr(owner, attr, None), int):
                return getattr(owner, attr)
    raise ValueError("--cliplite-prior-weight: can't tell the model's embedding size; set it to 0")


def _configure_model(model: nn.Module, args) -> None:
    """Attach the prior discriminator(s) as ``model.cliplite_prior`` when the prior term is on."""
    if getattr(args, "cliplite_prior_weight", 0) > 0:
        prior = build_prior(_embed_dim(model, args), args.cliplite_prior_on)
        setattr(model, PRIOR_MODULE_NAME, prior)
        _PENDING_PRIORS[id(args)] = prior


@register_loss("cliplite", add_args=_add_args, check_args=_check_args, configure_model=_configure_model,
               inactive_args=_inactive_args)
def _cliplite_loss(args) -> nn.Module:
    """CLIP-Lite JSD loss (``--loss cliplite``); see :class:`ClipLiteLoss`."""
    if getattr(args, "horovod", False):
        raise ValueError("--loss cliplite does not support --horovod; use torchrun / srun (torch.distributed)")
    prior = _PENDING_PRIORS.pop(id(args), None)
    weight = getattr(args, "cliplite_prior_weight", 0.0)
    if weight > 0 and prior is None:
        logging.warning("--cliplite-prior-weight > 0 but no model.cliplite_prior was attached: "
                        "the prior term is off (build the model after parsing the trainer's args)")
    return ClipLiteLoss(
        negatives=getattr(args, "cliplite_negatives", 1),
        direction=getattr(args, "cliplite_direction", "both"),
        prior=prior,
        prior_weight=weight,
        prior_grad=getattr(args, "cliplite_prior_grad", "reverse"),
        seed=getattr(args, "seed", 0),
        calls_per_step=getattr(args, "accum_freq", 1),
        local_loss=getattr(args, "local_loss", False),
        gather_with_grad=getattr(args, "gather_with_grad", False),
        rank=getattr(args, "rank", 0),
        world_size=getattr(args, "world_size", 1),
        progress=PROGRESS,
    )

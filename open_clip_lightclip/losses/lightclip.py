"""``--loss lightclip``: LightCLIP's multi-level interaction objective (our reading of arXiv 2312.00674).

Three named terms, each weighted by a flag (weight 0 turns the term off and skips its compute):

* ``instance_loss``: symmetric InfoNCE whose targets are ``1 - e(t)`` on the positive and
  ``e(t)`` spread over the negatives (uniformly, or in proportion to the model's own detached
  similarities). ``e(t)`` grows from 0 to ``e_max`` with global training progress ``t``.
  With ``e = 0`` it is exactly OpenCLIP's ``ClipLoss``.
* ``token_loss``: symmetric InfoNCE over token-level pair scores from (relaxed) bipartite
  matching of words to patches (see :mod:`.token_matching`).
* ``mlm_loss``: cross-entropy of the MLM head on masked word positions of the masked text,
  fused with the unmasked image (computed inside the model, see ``train_heads``).

Distributed like ``ClipLoss``: features and tokens are gathered (``--gather-with-grad``,
``--local-loss`` keep their meaning); the MLM term is the global mean over all ranks'
masked tokens, scaled so DDP's gradient averaging yields its exact gradient.
"""
import logging
import math
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.numerics import autocast_dtype, no_autocast
from .distributed import all_reduce_sum, gather_batch, local_term_scale, with_value
from .flags import finite_float
from .registry import register_loss
from .token_matching import MATCHING_MODES, SINKHORN_KERNELS, aligned_scores, token_scores, trim_words

__all__ = ["LightCLIPLoss", "soft_label_eps", "soft_targets", "soft_label_ce"]

SCHEDULES = ("linear", "cosine", "constant")
SPREADS = ("uniform", "similarity")
TOKEN_SCOPES = ("global", "local")


def soft_label_eps(progress: float, eps_max: float, schedule: str = "linear") -> float:
    """``e(t)`` for training progress ``t`` in [0, 1]."""
    t = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return eps_max * t
    if schedule == "cosine":
        return eps_max * 0.5 * (1 - math.cos(math.pi * t))
    if schedule == "constant":
        return eps_max
    raise ValueError(f"unknown soft-label schedule {schedule!r}; choose one of {SCHEDULES}")


def soft_targets(logits: torch.Tensor, labels: torch.Tensor, eps: float, spread: str = "uniform") -> torch.Tensor:
    """Rows of ``1 - eps`` at ``labels`` and ``eps`` spread over the other columns (fp32 at least). The reference
    for :func:`soft_label_ce`, which trains without building them."""
    logits = logits.detach().to(torch.promote_types(logits.dtype, torch.float32))
    positive = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
    if spread == "uniform":
        weights = (~positive).to(logits.dtype) / max(logits.shape[1] - 1, 1)
    elif spread == "similarity":
        weights = logits.masked_fill(positive, -math.inf).softmax(dim=1)
    else:
        raise ValueError(f"unknown soft-label spread {spread!r}; choose one of {SPREADS}")
    return torch.where(positive, 1.0 - eps, eps * weights)


def soft_label_ce(logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.0, spread: str = "uniform") -> torch.Tensor:
    """Mean cross-entropy against :func:`soft_targets`, in closed form and fp32 with autocast off: no B x B target
    or one-hot (the memory of ``ClipLoss``). ``uniform``: label smoothing ``eps * n / (n - 1)`` (n columns);
    ``similarity``: ``lse(z) - (1 - eps) z_y - eps * sum_j w_j z_j`` with ``w`` the detached softmax over the
    negatives."""
    if spread not in SPREADS:
        raise ValueError(f"unknown soft-label spread {spread!r}; choose one of {SPREADS}")
    with no_autocast(logits):
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        n = z.shape[1]
        if eps == 0.0 or n < 2:
            return F.cross_entropy(z, labels)
        if spread == "uniform":
            return F.cross_entropy(z, labels, label_smoothing=eps * n / (n - 1))
        w = z.detach().scatter(1, labels[:, None], -math.inf).softmax(dim=1)
        z_y = z.gather(1, labels[:, None])[:, 0]
        return (torch.logsumexp(z, dim=1) - (1 - eps) * z_y - eps * (w * z).sum(dim=1)).mean()


def _symmetric_ce(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor, labels: torch.Tensor,
                  eps: float = 0.0, spread: str = "uniform") -> torch.Tensor:
    return (soft_label_ce(logits_per_image, labels, eps, spread) + soft_label_ce(logits_per_text, labels, eps, spread)) / 2


class LightCLIPLoss(nn.Module):
    """Instance (progressive soft labels) + token (bipartite matching) + MLM terms (LightCLIP, arXiv 2312.00674).

    By default all three levels train, as the paper describes the method (``token_weight=1``, ``mlm_weight=0.5``);
    a weight of 0 turns a term off and skips its compute (the README says what each term measured and costs).

    ``progress`` is any object with a ``fraction`` attribute in [0, 1] (the trainer's
    :data:`open_clip_lightclip.losses.progress.PROGRESS` by default).
    """

    def __init__(
            self,
            instance_weight: float = 1.0,
            token_weight: float = 1.0,
            mlm_weight: float = 0.5,
            soft_label_max: float = 0.2,
            soft_label_schedule: str = "linear",
            soft_label_spread: str = "uniform",
            matching: str = "sinkhorn",
            sinkhorn_eps: float = 0.05,
            sinkhorn_iters: int = 10,
            sinkhorn_kernel: str = "scaling",
            chunk_elements: int = 2 ** 24,
            token_scope: str = "global",
            token_negatives: int = 0,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            rank: int = 0,
            world_size: int = 1,
            progress=None,
    ):
        super().__init__()
        if not any(w > 0 for w in (instance_weight, token_weight, mlm_weight)):
            raise ValueError("every term weight is 0: nothing to train; set instance_weight, token_weight or "
                             "mlm_weight > 0")
        if matching not in MATCHING_MODES:
            raise ValueError(f"unknown matching mode {matching!r}; choose one of {MATCHING_MODES}")
        self.instance_weight, self.token_weight, self.mlm_weight = instance_weight, token_weight, mlm_weight
        self.soft_label_max, self.soft_label_schedule = soft_label_max, soft_label_schedule
        self.soft_label_spread = soft_label_spread
        self.matching, self.sinkhorn_eps, self.sinkhorn_iters = matching, sinkhorn_eps, sinkhorn_iters
        if sinkhorn_kernel not in SINKHORN_KERNELS:
            raise ValueError(f"unknown Sinkhorn kernel {sinkhorn_kernel!r}; choose one of {SINKHORN_KERNELS}")
        self.sinkhorn_kernel = sinkhorn_kernel
        self.chunk_elements = chunk_elements
        if token_scope not in TOKEN_SCOPES:
            raise ValueError(f"unknown token scope {token_scope!r}; choose one of {TOKEN_SCOPES}")
        self.token_scope = token_scope
        if token_negatives < 0:
            raise ValueError(f"token_negatives must be >= 0 (0: every negative of the batch), got {token_negatives}")
        self.token_negatives = token_negatives
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size
        if progress is None:
            from .progress import PROGRESS as progress
        self.progress = progress
        self._logged_schedule = False

    def _gather(self, x: torch.Tensor, constant: bool = False, local_rows: bool = False,
                grad: Optional[bool] = None) -> torch.Tensor:
        """Every rank's ``x`` (ClipLoss semantics); ``constant`` for tensors without gradient (masks);
        ``local_rows`` for a term whose rows are this rank's samples whatever ``--local-loss`` says; ``grad``
        overrides ``--gather-with-grad``."""
        grad = self.gather_with_grad if grad is None else grad
        return gather_batch(x, self.rank, self.world_size, grad and not constant, self.local_loss or local_rows)

    def _labels(self, num_rows: int, device) -> torch.Tensor:
        offset = num_rows * self.rank if (self.local_loss and self.world_size > 1) else 0
        return torch.arange(num_rows, device=device) + offset

    def describe(self) -> str:
        """One line: the terms that run, their weights and their open choices (logged when the trainer starts)."""
        parts = []
        if self.instance_weight > 0:
            soft = (f"soft labels e(t) {self.soft_label_schedule} 0 -> {self.soft_label_max:g}, spread "
                    f"{self.soft_label_spread}" if self.soft_label_max > 0 else "hard labels")
            parts.append(f"instance x{self.instance_weight:g} ({soft})")
        if self.token_weight > 0:
            match = (f"sinkhorn eps {self.sinkhorn_eps:g}, {self.sinkhorn_iters} iters, kernel {self.sinkhorn_kernel}"
                     if self.matching == "sinkhorn" else self.matching)
            negatives = f"{self.token_negatives} hard negatives" if self.token_negatives else "all negatives"
            parts.append(f"token x{self.token_weight:g} ({match}; {self.token_scope} scope, {negatives})")
        if self.mlm_weight > 0:
            parts.append(f"mlm x{self.mlm_weight:g}")
        return " + ".join(parts)

    def log_fields(self) -> dict:
        """Values for the trainer's per-step log line: ``e(t)``, the soft labels' current mass on the negatives."""
        return {"e(t)": self.soft_label_eps} if self.instance_weight > 0 and self.soft_label_max > 0 else {}

    @property
    def soft_label_eps(self) -> float:
        return soft_label_eps(self.progress.fraction, self.soft_label_max, self.soft_label_schedule)

    def instance_loss(self, image_features, text_features, logit_scale) -> torch.Tensor:
        """Logits in fp32 with autocast off (at logit scale 100 an fp16 logit is rounded to 1/16)."""
        dtype = torch.promote_types(image_features.dtype, torch.float32)
        image_features, text_features = image_features.to(dtype), text_features.to(dtype)
        all_image, all_text = self._gather(image_features), self._gather(text_features)
        with no_autocast(image_features):
            if self.local_loss:
                logits_per_image = logit_scale * image_features @ all_text.T
                logits_per_text = logit_scale * text_features @ all_image.T
            else:
                logits_per_image = logit_scale * all_image @ all_text.T
                logits_per_text = logits_per_image.T
        labels = self._labels(logits_per_image.shape[0], logits_per_image.device)
        return _symmetric_ce(logits_per_image, logits_per_text, labels, self.soft_label_eps, self.soft_label_spread)

    def token_loss(self, image_tokens, text_tokens, text_mask, logit_scale) -> torch.Tensor:
        """Symmetric InfoNCE over token scores. Each rank computes only its own rows (its images against every
        text, its texts against every image), never the whole global matrix; the gathers keep their gradient
        (except under ``--local-loss`` alone, where the candidates are constants as in ``ClipLoss``) and the
        term is scaled by :func:`~.distributed.local_term_scale`, so under every flag combination its gradient
        is the same fraction of the single-process gradient as the instance term's."""
        kw = dict(mode=self.matching, eps=self.sinkhorn_eps, iters=self.sinkhorn_iters,
                  chunk_elements=self.chunk_elements, kernel=self.sinkhorn_kernel)
        scale = local_term_scale(self.world_size, self.local_loss, self.gather_with_grad)
        if self.token_scope == "local" or (self.world_size == 1 and not self.local_loss):
            # local scope: negatives from this rank's batch only; one process: the whole matrix, once
            text_tokens, text_mask = trim_words(text_tokens, text_mask)
            scores = token_scores(image_tokens, text_tokens, text_mask, **kw)
            labels = torch.arange(scores.shape[0], device=scores.device)
            loss = _symmetric_ce(logit_scale * scores, logit_scale * scores.T, labels)
            return loss if scale == 1.0 else with_value(scale * loss, all_reduce_sum(loss, self.world_size) / self.world_size)
        grad = self.gather_with_grad or not self.local_loss  # --local-loss alone: candidates are constants
        image_tokens, text_tokens = autocast_dtype(image_tokens), autocast_dtype(text_tokens)  # half the bytes
        all_image = self._gather(image_tokens, local_rows=True, grad=grad)
        all_text = self._gather(text_tokens, local_rows=True, grad=grad)
        all_mask = self._gather(text_mask, constant=True)
        all_text, all_mask = trim_words(all_text, all_mask)  # same length on every rank
        text_tokens, text_mask = text_tokens[:, :all_mask.shape[1]], text_mask[:, :all_mask.shape[1]]
        scores_i2t = token_scores(image_tokens, all_text, all_mask, **kw)
        scores_t2i = token_scores(all_image, text_tokens, text_mask, **kw).T
        labels = torch.arange(scores_i2t.shape[0], device=scores_i2t.device) + scores_i2t.shape[0] * self.rank
        loss = _symmetric_ce(logit_scale * scores_i2t, logit_scale * scores_t2i, labels)
        # the logged value: the global batch's loss (the mean of every rank's rows), as ClipLoss logs it
        return with_value(scale * loss, all_reduce_sum(loss, self.world_size) / self.world_size)

    def hard_negative_token_loss(self, image_tokens, text_tokens, text_mask, image_features, text_features,
                                 logit_scale) -> torch.Tensor:
        """The token term on each local sample's positive and its ``token_negatives`` hardest negatives of the
        gathered batch by the (detached) instance similarity: ``O(local batch x K)`` pairs, independent of the
        global batch. Rows are this rank's samples (as ``--local-loss``); with K >= global batch - 1 it is the
        full term. Candidates keep their gradient with ``--gather-with-grad`` only."""
        kw = dict(mode=self.matching, eps=self.sinkhorn_eps, iters=self.sinkhorn_iters,
                  chunk_elements=self.chunk_elements, kernel=self.sinkhorn_kernel)
        all_image, all_text = self._gather(image_tokens, local_rows=True), self._gather(text_tokens, local_rows=True)
        all_mask = self._gather(text_mask, constant=True, local_rows=True)
        all_text, all_mask = trim_words(all_text, all_mask)
        text_tokens, text_mask = text_tokens[:, :all_mask.shape[1]], text_mask[:, :all_mask.shape[1]]
        b, n = image_tokens.shape[0], all_image.shape[0]
        positives = torch.arange(b, device=image_tokens.device) + (b * self.rank if self.world_size > 1 else 0)
        k = min(self.token_negatives, n - 1)

        def candidates(anchors, pool):  # (b, k + 1) indices into the gathered batch, the positive first
            sim = anchors.detach() @ self._gather(pool.detach(), constant=True, local_rows=True).T
            sim[torch.arange(b, device=sim.device), positives] = -math.inf
            return torch.cat([positives[:, None], sim.topk(k, dim=1).indices], dim=1)

        texts, images = candidates(image_features, text_features), candidates(text_features, image_features)
        s_i2t = aligned_scores(image_tokens.repeat_interleave(k + 1, 0), all_text[texts.flatten()],
                               all_mask[texts.flatten()], **kw).view(b, k + 1)
        s_t2i = aligned_scores(all_image[images.flatten()], text_tokens.repeat_interleave(k + 1, 0),
                               text_mask.repeat_interleave(k + 1, 0), **kw).view(b, k + 1)
        labels = torch.zeros(b, dtype=torch.long, device=s_i2t.device)
        loss = _symmetric_ce(logit_scale * s_i2t, logit_scale * s_t2i, labels)
        scale = local_term_scale(self.world_size, self.local_loss, self.gather_with_grad)
        return loss if scale == 1.0 else with_value(scale * loss, loss)

    def mlm_loss(self, mlm_loss_sum: torch.Tensor, mlm_count: torch.Tensor) -> torch.Tensor:
        """Mean CE over all masked tokens of all ranks (the value logged on every rank). Its gradient, after
        DDP's averaging, is the same fraction of the single-process gradient as the instance term's
        (:func:`~.distributed.local_term_scale`)."""
        total = all_reduce_sum(mlm_count.sum(), self.world_size).clamp(min=1)
        local = mlm_loss_sum.sum()
        grad_part = local * (self.world_size * local_term_scale(self.world_size, self.local_loss,
                                                                  self.gather_with_grad)) / total
        return with_value(grad_part, all_reduce_sum(local, self.world_size) / total)

    def caption_terms(self, image_features, text_features, logit_scale, **unused):
        """The terms one more caption per image adds (``losses.synthetic``): the instance term (token and MLM terms
        use the real caption only)."""
        if self.instance_weight <= 0:
            return {}
        return {"instance_loss": self.instance_weight * self.instance_loss(image_features, text_features, logit_scale)}

    def forward(self, image_features, text_features, logit_scale, image_tokens: Optional[torch.Tensor] = None,
                text_tokens: Optional[torch.Tensor] = None, text_mask: Optional[torch.Tensor] = None,
                mlm_loss_sum: Optional[torch.Tensor] = None, mlm_count: Optional[torch.Tensor] = None,
                token_logit_scale: Optional[torch.Tensor] = None, output_dict: bool = False, **unused):
        losses = {}
        if not self._logged_schedule:  # where the schedule starts (after --resume too), whichever route built the loss
            self._logged_schedule = True
            logging.info(f"lightclip soft labels: step {getattr(self.progress, 'step', '?')}/"
                         f"{getattr(self.progress, 'total_steps', '?')} (t={self.progress.fraction:.3f}), "
                         f"e(t)={self.soft_label_eps:.4f}")
        if self.instance_weight > 0:
            losses["instance_loss"] = self.instance_weight * self.instance_loss(
                image_features, text_features, logit_scale)
        if self.token_weight > 0:
            if image_tokens is None or text_mask is None:
                raise ValueError("token_loss needs image_tokens / text_tokens / text_mask from a LightCLIP model "
                                 "with lightclip_train heads (model.add_train_heads)")
            # the model's own per-sample copies (B,) of its token temperature: the mean carries the gradient of
            # whichever copy is live, so --accum-freq (which concatenates per-sample outputs) trains it exactly
            scale = logit_scale if token_logit_scale is None else token_logit_scale.float().mean()
            if self.token_negatives:
                term = self.hard_negative_token_loss(image_tokens, text_tokens, text_mask, image_features,
                                                     text_features, scale)
            else:
                term = self.token_loss(image_tokens, text_tokens, text_mask, scale)
            losses["token_loss"] = self.token_weight * term
        if self.mlm_weight > 0:
            if mlm_loss_sum is None:
                raise ValueError("mlm_loss needs mlm_loss_sum / mlm_count from a LightCLIP model with an MLM head")
            losses["mlm_loss"] = self.mlm_weight * self.mlm_loss(mlm_loss_sum, mlm_count)
        return losses if output_dict else sum(losses.values())


# --- trainer integration: flags, checks, model heads, factory --------------------------------
# each term's own flags (``args`` names): while the term's weight is 0 they change nothing in the run
TERM_ARGS = {
    "token": ("lightclip_matching", "lightclip_sinkhorn_eps", "lightclip_sinkhorn_iters", "lightclip_sinkhorn_kernel",
              "lightclip_token_dim", "lightclip_token_chunk", "lightclip_token_scope", "lightclip_token_negatives",
              "lightclip_token_temperature"),
    "mlm": ("lightclip_fusion_layers", "lightclip_mask_prob", "lightclip_mask_rule", "lightclip_mlm_attention"),
    "instance": ("lightclip_soft_label_max", "lightclip_soft_label_schedule", "lightclip_soft_label_spread"),
}
# how --help marks the flags that act only while their term's weight is > 0
_TERM_ON = {"token": " (token term)", "mlm": " (MLM term)"}


def _add_args(group) -> None:
    def a(flag: str, **kw) -> None:
        dest = flag[2:].replace("-", "_")
        kw["help"] += "".join(mark for term, mark in _TERM_ON.items() if dest in TERM_ARGS[term])
        group.add_argument(flag, **kw)

    a("--lightclip-instance-weight", type=finite_float, default=1.0,
      help="weight of the instance-level term, contrastive with progressive soft labels (default 1; 0: off)")
    a("--lightclip-token-weight", type=finite_float, default=1.0,
      help="weight of the token-level term, word-patch matching (default 1; 0: off, and its compute skipped)")
    a("--lightclip-mlm-weight", type=finite_float, default=0.5,
      help="weight of the MLM-with-fusion term (default 0.5; 0: off, and its compute skipped)")
    a("--lightclip-soft-label-max", type=finite_float, default=0.2,
      help="e_max: label mass moved from the positive to the negatives at the end of training")
    a("--lightclip-soft-label-schedule", choices=SCHEDULES, default="linear",
      help="how e(t) grows from 0 to e_max over global training progress t")
    a("--lightclip-soft-label-spread", choices=SPREADS, default="uniform",
      help="spread e(t) uniformly over the negatives, or by the model's own detached similarities")
    a("--lightclip-matching", choices=MATCHING_MODES, default="sinkhorn",
      help="word-patch matching of the token term: entropic relaxation (batched), exact Hungarian (CPU), "
           "or FILIP token-wise max")
    a("--lightclip-sinkhorn-eps", type=finite_float, default=0.05,
      help="entropic regularisation of --lightclip-matching sinkhorn")
    a("--lightclip-sinkhorn-iters", type=int, default=10,
      help="Sinkhorn iterations (10: pair scores within 1e-5 of 300 iterations at eps 0.05)")
    a("--lightclip-sinkhorn-kernel", choices=SINKHORN_KERNELS, default="scaling",
      help="Sinkhorn implementation: matrix scaling (default; no exp/log inside the loop), the same through "
           "torch.compile (fused kernels; for GPUs), or the log-domain reference; all give the same plan (1e-5)")
    a("--lightclip-token-dim", type=int, default=256, help="dimension of the projected image / word tokens")
    a("--lightclip-token-chunk", type=int, default=2 ** 24,
      help="token term block size in similarity elements (pairs x words x patches); bounds its memory")
    a("--lightclip-token-scope", choices=TOKEN_SCOPES, default="global",
      help="negatives of the token term: the global (gathered) batch, or each rank's own batch "
           "(cost independent of the number of ranks)")
    a("--lightclip-token-negatives", type=int, default=0, metavar="K",
      help="token term on each local sample's positive and its K hardest negatives of the gathered batch (by "
           "instance similarity): cost O(local batch x K), independent of the global batch (0: all negatives)")
    a("--lightclip-fusion-layers", type=int, nargs="+", default=[2, 4, 6],
      help="text layers (1-based) after which the masked text cross-attends to the image tokens")
    a("--lightclip-mask-prob", type=finite_float, default=0.15, help="fraction of word tokens masked for MLM")
    a("--lightclip-mask-rule", type=finite_float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("MASK", "RANDOM", "KEEP"),
      help="BERT rule for masked positions: mask embedding / random token / unchanged")
    a("--lightclip-mlm-attention", choices=("bidirectional", "causal"), default="bidirectional",
      help="attention of the MLM pass through the (shared) text tower")
    a("--lightclip-token-temperature", choices=("shared", "own"), default="shared",
      help="logit scale of the token term: the model's (shared with the instance term) or its own learned one")


def _inactive_args(args) -> Dict[str, str]:
    """The flags of the terms that are off (and the soft-label shape when ``e_max`` is 0), each with why they train
    nothing."""
    off = {}
    for term, names in TERM_ARGS.items():
        if getattr(args, f"lightclip_{term}_weight") == 0:
            off.update({name: f"while the {term} term is off (--lightclip-{term}-weight 0)" for name in names})
    if args.lightclip_soft_label_max == 0:
        for name in ("lightclip_soft_label_schedule", "lightclip_soft_label_spread"):
            off.setdefault(name, "while --lightclip-soft-label-max is 0")
    return off


def _check_args(args) -> None:
    import open_clip

    cfg = open_clip.get_model_config(args.model) or {}
    if cfg.get("model_class") != "LightCLIP":
        raise ValueError(f"--loss lightclip needs a LightCLIP model (e.g. LightCLIP-MNv3), not {args.model!r}; "
                         "use --loss clip or --loss cliplite for other models")
    for flag in ("instance", "token", "mlm"):
        if getattr(args, f"lightclip_{flag}_weight") < 0:
            raise ValueError(f"--lightclip-{flag}-weight must be >= 0 (0 turns the term off)")
    if not any(getattr(args, f"lightclip_{f}_weight") for f in ("instance", "token", "mlm")):
        raise ValueError("all --lightclip-*-weight are 0: nothing to train; set at least one > 0")
    if not 0.0 < args.lightclip_mask_prob < 1.0:
        raise ValueError(f"--lightclip-mask-prob must be in (0, 1), got {args.lightclip_mask_prob}")
    if abs(sum(args.lightclip_mask_rule) - 1.0) > 1e-6 or min(args.lightclip_mask_rule) < 0:
        raise ValueError(f"--lightclip-mask-rule must be 3 non-negative numbers summing to 1, "
                         f"got {args.lightclip_mask_rule}")
    if not 0.0 <= args.lightclip_soft_label_max < 1.0:
        raise ValueError(f"--lightclip-soft-label-max must be in [0, 1), got {args.lightclip_soft_label_max}")
    layers = cfg["text_cfg"].get("layers", 12)
    bad = [x for x in args.lightclip_fusion_layers if not 1 <= x <= layers]
    if bad:  # checked whether MLM is on or off: a wrong value is wrong either way
        raise ValueError(f"--lightclip-fusion-layers {bad} don't exist: {args.model}'s text tower has layers 1..{layers}")
    if getattr(args, "horovod", False):
        raise ValueError("--loss lightclip does not support --horovod; use torchrun / srun (DDP)")
    if args.lightclip_sinkhorn_iters < 1:
        raise ValueError(f"--lightclip-sinkhorn-iters must be >= 1, got {args.lightclip_sinkhorn_iters} "
                         "(10 is within 1e-5 of convergence at eps 0.05)")
    if not args.lightclip_sinkhorn_eps > 0:
        raise ValueError(f"--lightclip-sinkhorn-eps must be > 0, got {args.lightclip_sinkhorn_eps} "
                         "(for exact one-to-one matching use --lightclip-matching hungarian)")
    if args.lightclip_token_chunk < 1:
        raise ValueError(f"--lightclip-token-chunk must be >= 1 similarity elements, got {args.lightclip_token_chunk}")
    if args.lightclip_token_negatives < 0:
        raise ValueError(f"--lightclip-token-negatives must be >= 0 (0: all negatives), got {args.lightclip_token_negatives}")
    if args.lightclip_token_negatives and args.lightclip_token_scope == "local":
        raise ValueError("--lightclip-token-negatives picks negatives from the gathered batch; drop "
                         "--lightclip-token-scope local (or the negatives)")
    if args.lightclip_token_dim < 1:
        raise ValueError(f"--lightclip-token-dim must be >= 1, got {args.lightclip_token_dim}")
    if args.lightclip_token_weight > 0 and args.lightclip_matching == "hungarian" and \
            not str(getattr(args, "device", "cpu")).startswith("cpu"):
        logging.warning("--lightclip-matching hungarian solves each pair with scipy on the CPU (twice per block with "
                        "checkpointing) and waits for the device every block: slow on a GPU; sinkhorn is the "
                        "batched relaxation")
    if getattr(args, "skip_scheduler", False) and args.lightclip_soft_label_max > 0:
        raise ValueError("--skip-scheduler stops the step count the soft-label schedule follows; drop it "
                         "(--lr-scheduler const keeps the learning rate constant) or set --lightclip-soft-label-max 0")


def _configure_model(model, args) -> None:
    token, mlm = args.lightclip_token_weight > 0, args.lightclip_mlm_weight > 0
    if token or mlm:  # else the instance term only: a plain CLIP forward
        _add_heads(model, args, token, mlm)


def _leaves_unused(args) -> bool:
    """Without the instance term, the pooled embeddings (and, without the token term, logit_scale) may feed no
    term: the trainer then freezes what the whole loss (distillation included) does not reach."""
    return args.lightclip_instance_weight == 0


def _add_heads(model, args, token: bool, mlm: bool) -> None:
    from ..models.train_heads import LightCLIPTrainCfg

    model.add_train_heads(LightCLIPTrainCfg(
        token=token,
        token_dim=args.lightclip_token_dim,
        mlm=mlm,
        fusion_layers=tuple(args.lightclip_fusion_layers),
        mask_prob=args.lightclip_mask_prob,
        mask_rule=tuple(args.lightclip_mask_rule),
        mlm_attention=args.lightclip_mlm_attention,
        token_temperature=args.lightclip_token_temperature,
    ))


@register_loss("lightclip", add_args=_add_args, check_args=_check_args, configure_model=_configure_model,
               inactive_args=_inactive_args, leaves_unused=_leaves_unused)
def create_lightclip_loss(args) -> LightCLIPLoss:
    return LightCLIPLoss(
        instance_weight=args.lightclip_instance_weight,
        token_weight=args.lightclip_token_weight,
        mlm_weight=args.lightclip_mlm_weight,
        soft_label_max=args.lightclip_soft_label_max,
        soft_label_schedule=args.lightclip_soft_label_schedule,
        soft_label_spread=args.lightclip_soft_label_spread,
        matching=args.lightclip_matching,
        sinkhorn_eps=args.lightclip_sinkhorn_eps,
        sinkhorn_kernel=args.lightclip_sinkhorn_kernel,
        sinkhorn_iters=args.lightclip_sinkhorn_iters,
        chunk_elements=args.lightclip_token_chunk,
        token_scope=args.lightclip_token_scope,
        token_negatives=args.lightclip_token_negatives,
        local_loss=args.local_loss,
        gather_with_grad=args.gather_with_grad,
        rank=args.rank,
        world_size=args.world_size,
    )

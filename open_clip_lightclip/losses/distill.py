"""Distillation terms that compose with every ``--loss``: affinity (similarity-distribution KL) and
feature (embedding distance through a learned projector), from one frozen teacher or an ensemble.

* Affinity distillation (TinyCLIP's affinity mimicking; MobileCLIP's KL to an ensemble with
  per-teacher logit scales): for teacher ``k`` with logit scale ``s_k`` the targets are
  ``softmax(s_k T_img T_txt^T)`` over the batch, row-wise, both directions; the term is the mean
  over teachers of ``(KL_i2t + KL_t2i) / 2``, each the mean over rows of
  ``KL(teacher row || student row)``, student logits ``s * S_img S_txt^T``. Its gradient is that of
  upstream ``DistillClipLoss``'s cross-entropy (which differs by the teachers' constant entropy).
* Feature distillation (CLIP-KD's strongest single term): ``|| P(S) / |P(S)| - T ||^2`` for the
  image and the text embedding of each sample (``mse``; unit vectors, so ``2 - 2 cos``), or
  ``1 - cos`` (``cosine``), mean over samples, image and text, then teachers. ``P`` is a
  training-only linear projector when the student's and the teacher's widths differ.

The model's forward adds the teacher outputs to ``model_out`` (``distill_t{k}_image_features``, ...,
see :func:`distill_keys`), so they travel with the student's through ``--accum-freq`` and DDP.

Distributed like ``ClipLoss`` (:mod:`.distributed`): the affinity term's rows and columns are
gathered as the instance term's (teacher features as constants), the feature term is a per-sample
term scaled by :func:`~.distributed.local_term_scale`: every term stays the same fraction of its
single-process gradient as the contrastive term, whatever the number of processes.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.numerics import no_autocast
from .distributed import gather_batch, local_term_scale, with_value
from .flags import finite_float

__all__ = ["FEATURE_DISTANCES", "affinity_kl", "feature_distance", "distill_keys", "DistillationLoss",
           "add_distill_args", "check_distill_args", "inactive_distill_args", "teacher_rows"]

FEATURE_DISTANCES = ("mse", "cosine")


def distill_keys(k: int) -> Dict[str, str]:
    """``model_out`` keys of teacher ``k``: its embeddings and the student's projected ones."""
    return {"teacher_image": f"distill_t{k}_image_features", "teacher_text": f"distill_t{k}_text_features",
            "student_image": f"distill_p{k}_image_features", "student_text": f"distill_p{k}_text_features"}


def _row_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``KL(softmax(teacher) || softmax(student))``."""
    log_t = teacher_logits.log_softmax(dim=1)
    return (log_t.exp() * (log_t - student_logits.log_softmax(dim=1))).sum(dim=1).mean()


def affinity_kl(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                teacher_image: torch.Tensor, teacher_text: torch.Tensor, teacher_scale: float,
                all_image: Optional[torch.Tensor] = None, all_text: Optional[torch.Tensor] = None,
                all_teacher_image: Optional[torch.Tensor] = None,
                all_teacher_text: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(KL_i2t + KL_t2i) / 2`` between the teacher's and the student's similarity distributions.

    Rows are ``image`` / ``text`` (this rank's, or the whole batch); columns the ``all_*`` (gathered)
    features, ``image`` / ``text`` themselves when not given."""
    all_image = image if all_image is None else all_image
    all_text = text if all_text is None else all_text
    all_teacher_image = teacher_image if all_teacher_image is None else all_teacher_image
    all_teacher_text = teacher_text if all_teacher_text is None else all_teacher_text
    dtype = torch.promote_types(image.dtype, torch.float32)  # in fp32 at least, with autocast off: logits at
    with no_autocast(image):  # scale 100 and a KL of near-equal distributions
        image, text, all_image, all_text = (x.to(dtype) for x in (image, text, all_image, all_text))
        teacher_image, teacher_text = teacher_image.to(dtype), teacher_text.to(dtype)
        all_teacher_image, all_teacher_text = all_teacher_image.to(dtype), all_teacher_text.to(dtype)
        i2t = _row_kl(teacher_scale * teacher_image @ all_teacher_text.T, logit_scale * image @ all_text.T)
        t2i = _row_kl(teacher_scale * teacher_text @ all_teacher_image.T, logit_scale * text @ all_image.T)
    return (i2t + t2i) / 2


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, distance: str = "mse") -> torch.Tensor:
    """Per-sample distance of the (projected) student embedding, made unit-norm, to the teacher's: (B,)."""
    dtype = torch.promote_types(student.dtype, torch.float32)
    s, t = F.normalize(student.to(dtype), dim=-1), F.normalize(teacher.to(dtype), dim=-1)
    if distance == "mse":
        return (s - t).square().sum(-1)
    if distance == "cosine":
        return 1 - (s * t).sum(-1)
    raise ValueError(f"unknown feature distance {distance!r}; choose one of {FEATURE_DISTANCES}")


class DistillationLoss(nn.Module):
    """``base`` (any ``--loss``) plus the distillation terms ``distill_affinity_loss`` and
    ``distill_feature_loss`` (weights 0 leave a term out), from the teacher outputs in ``model_out``."""

    def __init__(self, base: nn.Module, teacher_scales: Sequence[float], affinity_weight: float = 1.0,
                 feature_weight: float = 0.0, feature_distance: str = "mse", local_loss: bool = False,
                 gather_with_grad: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__()
        if feature_distance not in FEATURE_DISTANCES:
            raise ValueError(f"unknown feature distance {feature_distance!r}; choose one of {FEATURE_DISTANCES}")
        if not teacher_scales:
            raise ValueError("distillation needs at least one teacher")
        self.base = base
        self.teacher_scales = [float(s) for s in teacher_scales]
        self.affinity_weight, self.feature_weight = affinity_weight, feature_weight
        self.feature_distance = feature_distance
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    def _gather(self, x: torch.Tensor, constant: bool = False) -> torch.Tensor:
        return gather_batch(x, self.rank, self.world_size, self.gather_with_grad and not constant, self.local_loss)

    def affinity_loss(self, image, text, logit_scale, teachers) -> torch.Tensor:
        all_image, all_text = self._gather(image), self._gather(text)
        if not self.local_loss:  # every rank: the whole batch's rows (as ClipLoss)
            image, text = all_image, all_text
        terms = []
        for (t_image, t_text), scale in zip(teachers, self.teacher_scales):
            all_t_image, all_t_text = self._gather(t_image, constant=True), self._gather(t_text, constant=True)
            rows = (t_image, t_text) if self.local_loss else (all_t_image, all_t_text)
            terms.append(affinity_kl(image, text, logit_scale, *rows, scale, all_image, all_text, all_t_image, all_t_text))
        return torch.stack(terms).mean()

    def feature_loss(self, students, teachers) -> torch.Tensor:
        terms = []
        for (s_image, s_text), (t_image, t_text) in zip(students, teachers):
            d = (feature_distance(s_image, t_image, self.feature_distance)
                 + feature_distance(s_text, t_text, self.feature_distance)) / 2
            terms.append(d.mean())
        loss = torch.stack(terms).mean()
        scale = local_term_scale(self.world_size, self.local_loss, self.gather_with_grad)
        return loss if scale == 1.0 else with_value(scale * loss, loss)

    def _teacher_outputs(self, image_features, text_features, model_out):
        teachers, students = [], []
        for k in range(len(self.teacher_scales)):
            keys = distill_keys(k)
            if keys["teacher_image"] not in model_out:
                raise ValueError(f"distillation: model_out has no {keys['teacher_image']!r}; the teachers run in the "
                                 "model's forward (open-clip-lightclip attaches them when the trainer builds it)")
            teachers.append((model_out.pop(keys["teacher_image"]), model_out.pop(keys["teacher_text"])))
            students.append((model_out.pop(keys["student_image"], image_features),
                             model_out.pop(keys["student_text"], text_features)))
        return teachers, students

    def caption_terms(self, image_features, text_features, logit_scale, **model_out):
        """The terms one more caption per image adds (``losses.synthetic``): the objective's caption terms and both
        distillation terms on it (the feature term on the caption's embedding only, at the half of the feature term
        a real caption's embedding carries: the image's half is counted once)."""
        from .synthetic import caption_terms

        teachers, students = self._teacher_outputs(image_features, text_features, model_out)
        losses = caption_terms(self.base, image_features, text_features, logit_scale, **model_out)
        if self.affinity_weight:
            losses["distill_affinity_loss"] = self.affinity_weight * self.affinity_loss(
                image_features, text_features, logit_scale, teachers)
        if self.feature_weight:
            terms = [feature_distance(s_text, t_text, self.feature_distance).mean() / 2
                     for (_, s_text), (_, t_text) in zip(students, teachers)]
            loss = torch.stack(terms).mean()
            scale = local_term_scale(self.world_size, self.local_loss, self.gather_with_grad)
            losses["distill_feature_loss"] = self.feature_weight * (loss if scale == 1.0 else
                                                                    with_value(scale * loss, loss))
        return losses

    def forward(self, image_features, text_features, logit_scale, output_dict: bool = False, **model_out):
        teachers, students = self._teacher_outputs(image_features, text_features, model_out)
        losses = self.base(image_features=image_features, text_features=text_features, logit_scale=logit_scale,
                           output_dict=True, **model_out)
        if not isinstance(losses, dict):
            losses = {"contrastive_loss": losses}
        losses = dict(losses)
        if self.affinity_weight:
            losses["distill_affinity_loss"] = self.affinity_weight * self.affinity_loss(
                image_features, text_features, logit_scale, teachers)
        if self.feature_weight:
            losses["distill_feature_loss"] = self.feature_weight * self.feature_loss(students, teachers)
        return losses if output_dict else sum(losses.values())


def add_distill_args(group) -> None:
    """The ``--distill-*`` flags of the plugin (upstream's ``--distill-model`` / ``--distill-pretrained`` name a
    teacher too)."""
    a = group.add_argument
    a("--distill-teacher", nargs="+", default=None, metavar="MODEL[=WEIGHTS]",
      help="teacher(s), frozen: an OpenCLIP model name and its weights (a checkpoint path, a pretrained tag, "
           "local-dir:PATH), or hf-hub:ORG/NAME alone; several make an ensemble. Needs --loss")
    a("--distill-affinity-weight", type=finite_float, default=1.0,
      help="weight of the affinity term: KL between the teacher's and the student's image-text similarity "
           "distributions over the batch (0: off)")
    a("--distill-feature-weight", type=finite_float, default=0.0,
      help="weight of the feature term: distance of the student's embeddings (through a training-only projector "
           "when the widths differ) to the teacher's (0: off)")
    a("--distill-feature-distance", choices=FEATURE_DISTANCES, default="mse",
      help="feature term distance on unit vectors: squared L2 (mse) or 1 - cosine")
    a("--distill-teacher-logit-scale", type=finite_float, nargs="+", default=None, metavar="SCALE",
      help="the teachers' logit scales in the affinity term (one, or one per teacher); default: each "
           "teacher's own learned scale")
    a("--distill-cache", action="store_true",
      help="read the teachers' embeddings from the training shards (made by `open-clip-lightclip "
           "cache-teacher`) instead of running a teacher")
    a("--distill-reinforced", action="store_true",
      help="train from reinforced shards (made by `open-clip-lightclip reinforce`): each step replays one stored "
           "augmentation per sample and uses the teachers' stored embeddings of that view (or, with "
           "--distill-teacher, runs the teacher online on it) and one stored synthetic caption")
    a("--distill-synthetic-weight", type=finite_float, default=1.0,
      help="with --distill-reinforced: weight of the synthetic captions' terms beside the real captions' (MobileCLIP "
           "sums both: 1, the default; 0: real captions only)")


def inactive_distill_args(args) -> Dict[str, str]:
    """The ``--distill-*`` flags that change nothing for ``args``, each with why: all of them without a teacher,
    the teachers' logit scales while the affinity term is off, the feature distance while the feature term is off,
    the synthetic captions' weight without reinforced shards."""
    reinforced = getattr(args, "distill_reinforced", False)
    idle = {} if reinforced else {"distill_synthetic_weight": "without --distill-reinforced"}
    if not (args.distill_teacher or args.distill_cache or reinforced):
        why = "without a teacher (--distill-teacher, --distill-cache or --distill-reinforced)"
        return {**idle, **{name: why for name in ("distill_affinity_weight", "distill_feature_weight",
                                                  "distill_feature_distance", "distill_teacher_logit_scale")}}
    if not args.distill_affinity_weight:
        idle["distill_teacher_logit_scale"] = "with --distill-affinity-weight 0"
    if not args.distill_feature_weight:
        idle["distill_feature_distance"] = "with --distill-feature-weight 0"
    return idle


def teacher_rows(args) -> bool:
    """True when a ``--distill-reinforced`` run reads teacher embeddings from its shards (no online teacher, a
    distillation term on)."""
    return bool(getattr(args, "distill_reinforced", False) and not args.distill_teacher
                and (args.distill_affinity_weight or args.distill_feature_weight))


def check_distill_args(args) -> None:
    """One-line ``ValueError`` for distillation flags that cannot work together."""
    teachers = list(args.distill_teacher or [])
    reinforced = getattr(args, "distill_reinforced", False)
    if teachers and args.distill_cache:
        raise ValueError("--distill-cache reads the teachers' embeddings from the shards: drop --distill-teacher "
                         "(the cache records which teachers made it)")
    if reinforced and args.distill_cache:
        raise ValueError("--distill-reinforced reads the teachers' embeddings of each stored view from reinforced "
                         "shards; --distill-cache reads those of `cache-teacher` shards: choose one")
    if getattr(args, "distill_synthetic_weight", 0.0) < 0:
        raise ValueError(f"--distill-synthetic-weight must be >= 0, got {args.distill_synthetic_weight}")
    if not (teachers or args.distill_cache or reinforced):
        return
    for flag in ("affinity", "feature"):
        if getattr(args, f"distill_{flag}_weight") < 0:
            raise ValueError(f"--distill-{flag}-weight must be >= 0, got {getattr(args, f'distill_{flag}_weight')}")
    if not (args.distill_affinity_weight or args.distill_feature_weight) and not (reinforced and not teachers):
        raise ValueError("every distillation weight is 0: set --distill-affinity-weight or --distill-feature-weight "
                         "above 0, or drop the teacher")
    scales = args.distill_teacher_logit_scale
    if scales is not None and teachers and len(scales) not in (1, len(teachers)):
        raise ValueError(f"--distill-teacher-logit-scale: {len(scales)} values for {len(teachers)} teachers; give one, "
                         "or one per teacher")

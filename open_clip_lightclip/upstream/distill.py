"""Distillation in the trainer (part of the seam): teachers on the trainer's model, the loss wrapped.

* after parsing: upstream's ``--distill-model M --distill-pretrained P`` with ``--loss`` become the
  teacher ``M=P`` of the plugin's distillation (upstream's own path, which feeds the teacher the
  student's tokens and refuses ``--accum-freq``, is then off);
* when the trainer's model is built: the teachers (or the cache's description) and the projector are
  attached to it (:func:`~open_clip_lightclip.models.distill_heads.attach_distillation`);
* ``create_loss``: the ``--loss`` module wrapped in
  :class:`~open_clip_lightclip.losses.distill.DistillationLoss`;
* the trainer's webdataset pipeline packs the cached teacher embeddings of ``cache-teacher`` shards
  into the text field (:func:`~open_clip_lightclip.data.teacher_cache.pack_sample`).
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Optional

__all__ = ["distillation_requested", "translate_upstream_flags", "configure_distillation", "wrap_loss",
           "cache_info_for"]


def distillation_requested(args) -> bool:
    return bool(getattr(args, "distill_teacher", None) or getattr(args, "distill_cache", False))


def translate_upstream_flags(args: argparse.Namespace) -> None:
    """``--distill-model`` / ``--distill-pretrained`` with ``--loss``: the plugin's first teacher."""
    if args.loss is None or not (args.distill_model and args.distill_pretrained):
        return
    args.distill_teacher = [f"{args.distill_model}={args.distill_pretrained}", *(args.distill_teacher or [])]
    args.distill_model = args.distill_pretrained = None  # upstream's distillation path stays off


def cache_info_for(train_data: Optional[str]) -> dict:
    """``teacher_cache.json`` beside the first training shard (written by ``cache-teacher``)."""
    from ..models.teachers import TeacherError

    if not train_data:
        raise TeacherError("--distill-cache needs --train-data: the shards `open-clip-lightclip cache-teacher` wrote")
    from braceexpand import braceexpand

    first = next(iter(braceexpand(train_data.split("::")[0])))
    path = Path(first).parent / "teacher_cache.json"
    if not path.is_file():
        raise TeacherError(f"--distill-cache: no {path}; make the shards with `open-clip-lightclip cache-teacher`")
    return json.loads(path.read_text())


def configure_distillation(model, args) -> None:
    """Attach the teachers (or the cache's dims) and, for the feature term, the projector to the trainer's model."""
    import open_clip

    from ..models.distill_heads import DistillProjector, attach_distillation, student_embed_dim
    from ..models.teachers import build_teacher

    tokenizer = open_clip.get_tokenizer(args.model)
    if args.distill_cache:
        info = cache_info_for(args.train_data)
        teachers, names = None, [t["spec"] for t in info["teachers"]]
        dims, scales = [t["dim"] for t in info["teachers"]], [t["logit_scale"] for t in info["teachers"]]
    else:
        teachers = [build_teacher(spec, device=args.device, precision=args.precision,
                                  cache_dir=getattr(args, "cache_dir", None)) for spec in args.distill_teacher]
        names, dims, scales = list(args.distill_teacher), [t.embed_dim for t in teachers], \
            [t.logit_scale for t in teachers]
    if args.distill_teacher_logit_scale:
        given = args.distill_teacher_logit_scale
        scales = list(given) * len(dims) if len(given) == 1 else list(given)
    projector = None
    if args.distill_feature_weight > 0:
        student_dim = student_embed_dim(model, tokenizer)
        if any(d != student_dim for d in dims):
            projector = DistillProjector(student_dim, dims)
    attach_distillation(model, teachers, dims, tokenizer, projector)
    args.distill_teacher_scales = scales
    how = "cached embeddings" if teachers is None else "online"
    logging.info(f"open-clip-lightclip: distilling from {', '.join(names)} ({how}; "
                 f"logit scales {', '.join(f'{s:.1f}' for s in scales)}; affinity weight {args.distill_affinity_weight}, "
                 f"feature weight {args.distill_feature_weight})")


def wrap_loss(loss, args):
    """The ``--loss`` module, plus the distillation terms when the trainer's model has teachers."""
    scales = getattr(args, "distill_teacher_scales", None)
    if not scales:
        return loss
    from ..losses.distill import DistillationLoss

    return DistillationLoss(loss, scales, affinity_weight=args.distill_affinity_weight,
                            feature_weight=args.distill_feature_weight,
                            feature_distance=args.distill_feature_distance, local_loss=args.local_loss,
                            gather_with_grad=args.gather_with_grad, rank=args.rank, world_size=args.world_size)

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

__all__ = ["distillation_requested", "translate_upstream_flags", "check_distillation", "configure_distillation",
           "configure_model", "wrap_loss", "sample_stage", "cache_info_for", "register_train_hook"]


def distillation_requested(args) -> bool:
    return bool(getattr(args, "distill_teacher", None) or getattr(args, "distill_cache", False))


def translate_upstream_flags(args: argparse.Namespace) -> None:
    """``--distill-model`` / ``--distill-pretrained`` with ``--loss``: the plugin's first teacher."""
    if args.loss is None or not (args.distill_model and args.distill_pretrained):
        return
    args.distill_teacher = [f"{args.distill_model}={args.distill_pretrained}", *(args.distill_teacher or [])]
    args.distill_model = args.distill_pretrained = None  # upstream's distillation path stays off


def check_distillation(args: argparse.Namespace) -> None:
    """One-line ``ValueError`` for distillation flags that cannot work (right after parsing; upstream's
    ``--distill-model`` / ``--distill-pretrained`` with ``--loss`` become the first teacher first)."""
    if args.loss is None:
        if distillation_requested(args):
            raise ValueError("--distill-teacher / --distill-cache work with the plugin's objectives: add --loss "
                             "(e.g. --loss clip)")
        return
    translate_upstream_flags(args)
    from ..losses.distill import check_distill_args
    from ..models.teachers import check_teacher_spec

    check_distill_args(args)
    for spec in args.distill_teacher or []:
        error = check_teacher_spec(spec)
        if error:
            raise ValueError(error)
    if args.distill_cache and args.dataset_type not in ("webdataset", "auto"):
        raise ValueError(f"--distill-cache reads webdataset shards; got --dataset-type {args.dataset_type}")


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


def configure_model(model, args) -> None:
    """The trainer's model, once built: teachers attached when distillation is asked for."""
    if distillation_requested(args):
        configure_distillation(model, args)


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


def sample_stage(args):
    """With ``--distill-cache``: the webdataset stage that replaces the trainer's ``to_tuple("image", "text")``,
    packing each sample's cached teacher embeddings into its text field; else None."""
    if not getattr(args, "distill_cache", False):
        return None
    import webdataset as wds

    from ..data.teacher_cache import pack_sample

    return wds.map(pack_sample)


def register_train_hook(open_clip) -> None:
    """Distillation through the train-hook API of an OpenCLIP carrying ``patches/`` (the same functions the
    runtime seam calls)."""
    from ..losses.distill import add_distill_args

    open_clip.register_train_hook("distillation (every --loss)", add_args=add_distill_args,
                                  check_args=check_distillation, configure_model=configure_model,
                                  wrap_loss=wrap_loss, sample_stage=sample_stage)

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
import logging
from typing import Optional

__all__ = ["reinforced_get_wds_dataset", "map_dict_stage", "reinforced_stage",
           "distillation_requested", "translate_upstream_flags", "check_distillation", "configure_distillation",
           "configure_model", "wrap_loss", "sample_stage", "cache_info_for", "register_train_hook"]


def distillation_requested(args) -> bool:
    return bool(getattr(args, "distill_teacher", None) or getattr(args, "distill_cache", False)
                or getattr(args, "distill_reinforced", False))


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
            raise ValueError("--distill-teacher / --distill-cache / --distill-reinforced work with the plugin's "
                             "objectives: add --loss (e.g. --loss clip)")
        return
    translate_upstream_flags(args)
    from ..losses.distill import check_distill_args
    from ..models.teachers import check_teacher_spec

    check_distill_args(args)
    for spec in args.distill_teacher or []:
        error = check_teacher_spec(spec)
        if error:
            raise ValueError(error)
    for flag in ("cache", "reinforced"):
        if getattr(args, f"distill_{flag}", False) and args.dataset_type not in ("webdataset", "auto"):
            raise ValueError(f"--distill-{flag} reads webdataset shards; got --dataset-type {args.dataset_type}")
    if getattr(args, "distill_reinforced", False):
        import open_clip

        from .hooks import upstream_has_hooks

        if upstream_has_hooks(open_clip):  # its train-hook API has no stage for the augmentation
            raise ValueError("--distill-reinforced replays stored views through the plugin's runtime seam, which an "
                             "OpenCLIP carrying patches/ leaves out: train it with the released open_clip_torch 3.3")
        own = sorted(k for k in ("use_timm", "re_prob") if (getattr(args, "aug_cfg", None) or {}).get(k))
        if own:  # timm's transform draws choices the stored views do not record
            raise ValueError(f"--distill-reinforced replays OpenCLIP's own train transform, which --aug-cfg {own[0]} "
                             f"replaces: drop {own[0]} from --aug-cfg")
        _reinforced_plan(args)  # the shards hold what the run asks for: checked before anything is built


def cache_info_for(train_data: Optional[str]) -> dict:
    """``teacher_cache.json`` beside the training shards (written by ``cache-teacher``; every folder's, one
    teacher set)."""
    from ..data.derived import read_description
    from ..data.teacher_cache import CACHE_INFO
    from ..models.teachers import TeacherError

    return read_description(train_data, CACHE_INFO, ("teachers",), TeacherError, "--distill-cache", "cache-teacher")


def _reinforced_plan(args) -> dict:
    """What a ``--distill-reinforced`` run reads from its shards: the description, whether teacher rows and
    synthetic captions are packed into the batch (one-line errors for shards that lack them)."""
    from ..data.reinforced import ReinforceError, read_info
    from ..losses.distill import teacher_rows

    info = read_info(args.train_data)
    cached, synthetic = teacher_rows(args), args.distill_synthetic_weight > 0
    if cached and not info.get("teachers"):
        raise ReinforceError("--distill-reinforced: these shards hold no teacher embeddings (reinforced without "
                             "--teacher); name a --distill-teacher, or set the distillation weights to 0")
    if synthetic and not info.get("synthetic"):
        raise ReinforceError("--distill-reinforced: these shards hold no synthetic captions (reinforced without "
                             "--captioner); add --distill-synthetic-weight 0, or reinforce with --captioner")
    return {"info": info, "cached": cached, "synthetic": synthetic}


def configure_distillation(model, args) -> None:
    """Attach the teachers (or the cache's dims) and, for the feature term, the projector to the trainer's model."""
    import open_clip

    from ..models.distill_heads import DistillProjector, attach_distillation, student_embed_dim
    from ..models.teachers import build_teacher

    tokenizer = open_clip.get_tokenizer(args.model)
    plan = _reinforced_plan(args) if args.distill_reinforced else None
    args.distill_reinforced_plan = plan
    if args.distill_cache or (plan and plan["cached"]):
        info = cache_info_for(args.train_data) if args.distill_cache else plan["info"]
        teachers, names = None, [t["spec"] for t in info["teachers"]]
        dims, scales = [t["dim"] for t in info["teachers"]], [t["logit_scale"] for t in info["teachers"]]
    elif args.distill_teacher:
        teachers = [build_teacher(spec, device=args.device, precision=args.precision,
                                  cache_dir=getattr(args, "cache_dir", None)) for spec in args.distill_teacher]
        names, dims, scales = list(args.distill_teacher), [t.embed_dim for t in teachers], \
            [t.logit_scale for t in teachers]
    else:  # reinforced shards for their augmentations and synthetic captions only
        teachers, names, dims, scales = None, [], [], []
    if args.distill_teacher_logit_scale and dims:
        given = args.distill_teacher_logit_scale
        scales = list(given) * len(dims) if len(given) == 1 else list(given)
    projector = None
    if args.distill_feature_weight > 0 and dims:
        student_dim = student_embed_dim(model, tokenizer)
        if any(d != student_dim for d in dims):
            projector = DistillProjector(student_dim, dims)
    attach_distillation(model, teachers, dims, tokenizer, projector, synthetic=bool(plan and plan["synthetic"]))
    args.distill_teacher_scales = scales
    if plan:
        from ..data.augment import AugmentSpec

        info = plan["info"]
        logging.info(f"open-clip-lightclip: reinforced shards: {info['views']} stored views per image "
                     f"({AugmentSpec.from_dict(info['augment']).describe()}), one replayed per sample and epoch"
                     + (f"; + {args.distill_synthetic_weight:g} x the terms of one of {info['synthetic']} synthetic "
                        f"captions" if plan["synthetic"] else "; real captions only"))
    if dims:
        how = "cached embeddings" if teachers is None else "online"
        logging.info(f"open-clip-lightclip: distilling from {', '.join(names)} ({how}; logit scales "
                     f"{', '.join(f'{s:.1f}' for s in scales)}; affinity weight {args.distill_affinity_weight}, "
                     f"feature weight {args.distill_feature_weight})")


def configure_model(model, args) -> None:
    """The trainer's model, once built: teachers attached when distillation is asked for."""
    if distillation_requested(args):
        configure_distillation(model, args)


def wrap_loss(loss, args):
    """The ``--loss`` module, plus the distillation terms when the trainer's model has teachers, plus the synthetic
    captions' terms when it trains from reinforced shards with them."""
    scales = getattr(args, "distill_teacher_scales", None)
    if scales:
        from ..losses.distill import DistillationLoss

        loss = DistillationLoss(loss, scales, affinity_weight=args.distill_affinity_weight,
                                feature_weight=args.distill_feature_weight,
                                feature_distance=args.distill_feature_distance, local_loss=args.local_loss,
                                gather_with_grad=args.gather_with_grad, rank=args.rank, world_size=args.world_size)
    plan = getattr(args, "distill_reinforced_plan", None)
    if plan and plan["synthetic"]:
        from ..losses.synthetic import SyntheticCaptionLoss

        loss = SyntheticCaptionLoss(loss, args.distill_synthetic_weight)
    return loss


def sample_stage(args):
    """With ``--distill-cache``: the webdataset stage that replaces the trainer's ``to_tuple("image", "text")``,
    packing each sample's cached teacher embeddings into its text field; else None."""
    if not getattr(args, "distill_cache", False):
        return None
    import webdataset as wds

    from ..data.teacher_cache import pack_sample

    return wds.map(pack_sample)


_BUILDING: Optional[dict] = None  # the training pipeline of a --distill-reinforced run, while upstream builds it


def reinforced_get_wds_dataset(upstream_get_wds_dataset):
    """Upstream's ``get_wds_dataset``; for the training data of a ``--distill-reinforced`` run, built with
    :func:`reinforced_stage` in place of its augmentation and ``to_tuple`` (see :func:`map_dict_stage`)."""
    import functools

    @functools.wraps(upstream_get_wds_dataset)
    def get_wds_dataset(args, preprocess_img, is_train, epoch=0, floor=False, tokenizer=None):
        global _BUILDING
        plan = getattr(args, "distill_reinforced_plan", None)
        if not (is_train and plan):
            return upstream_get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor,
                                            tokenizer=tokenizer)
        _BUILDING = {"args": args, "preprocess": preprocess_img, "plan": plan, "stage": None, "text": None}
        try:
            data = upstream_get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor,
                                            tokenizer=tokenizer)
        finally:
            building, _BUILDING = _BUILDING, None
        if building["stage"] is None:
            raise RuntimeError("--distill-reinforced: the trainer's webdataset pipeline has no map_dict(image, text) / "
                               "to_tuple('image', 'text') stage to replace; this OpenCLIP is not the tested 3.3.x")
        return data

    return get_wds_dataset


def map_dict_stage(kwargs: dict):
    """While a reinforced training pipeline is built: the trainer's ``map_dict(image=augment, text=tokenize)``
    without the augmentation (the image stays decoded, the stored one is replayed later); else None."""
    if _BUILDING is None or set(kwargs) != {"image", "text"}:
        return None
    import webdataset as wds

    _BUILDING["text"] = kwargs["text"]
    return wds.map_dict(text=kwargs["text"])


def reinforced_stage():
    """While a reinforced training pipeline is built: the ``to_tuple("image", "text")`` replacement that replays a
    stored view and packs the text field (``data.reinforced.ReinforcedSamples``); else None."""
    if _BUILDING is None or _BUILDING["text"] is None:
        return None
    from ..data.augment import AugmentError, AugmentSpec, output_layout, spec_from_transform
    from ..data.reinforced import ReinforcedSamples

    args, plan = _BUILDING["args"], _BUILDING["plan"]
    size, mean, std = output_layout(_BUILDING["preprocess"])
    stored = AugmentSpec.from_dict(plan["info"]["augment"])
    try:
        own = spec_from_transform(_BUILDING["preprocess"])
    except AugmentError:
        own = None
    if own != stored:
        logging.warning(f"--distill-reinforced: the shards' stored views were drawn with {stored.describe()}; this "
                        f"run's --aug-cfg would draw {own.describe() if own else 'other choices'}: the stored views "
                        "are replayed")
    stage = ReinforcedSamples(_BUILDING["text"], size, mean, std, args.seed, plan["info"], plan["cached"],
                              plan["synthetic"])
    from .hooks import follow_epoch

    _BUILDING["stage"] = follow_epoch(stage)  # the draws follow the trainer's epoch (and --resume)
    return stage


def register_train_hook(open_clip) -> None:
    """Distillation through the train-hook API of an OpenCLIP carrying ``patches/`` (the same functions the
    runtime seam calls)."""
    from ..losses.distill import add_distill_args
    from .trainer_args import warn_idle_flags

    def check_args(args):
        check_distillation(args)
        warn_idle_flags(args)  # the plugin's flags that train nothing in this run, as on the runtime-hook route

    open_clip.register_train_hook("distillation (every --loss)", add_args=add_distill_args,
                                  check_args=check_args, configure_model=configure_model,
                                  wrap_loss=wrap_loss, sample_stage=sample_stage)

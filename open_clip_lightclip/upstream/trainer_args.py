"""The plugin's ``open_clip_train`` flags: definitions and the checks run right after parsing.

Plain argparse; :mod:`.hooks` adds them to upstream's parser.
"""
import argparse

__all__ = ["add_args", "check_args"]


def add_args(parser: argparse.ArgumentParser) -> None:
    from ..losses import get_loss_entry, list_losses

    group = parser.add_argument_group("open-clip-lightclip")
    group.add_argument(
        "--loss",
        type=str,
        default=None,
        choices=list_losses(),
        help="Training objective (open-clip-lightclip). Absent: upstream's choice (--siglip, CoCa, distill).",
    )
    for name in list_losses():
        entry = get_loss_entry(name)
        if entry.add_args is not None:
            entry.add_args(parser.add_argument_group(f"--loss {name}"))
    from ..losses.distill import add_distill_args

    add_distill_args(parser.add_argument_group("distillation (every --loss)"))


def _check_model_name(name: str) -> str:
    """Empty string when ``name`` is a model OpenCLIP can build, else a one-line error."""
    from open_clip.factory import get_model_config, list_models, parse_model_name

    from ..models.timm_names import nearest_names

    schema, identifier = parse_model_name(name)
    try:
        if schema is not None or get_model_config(identifier.replace("/", "-")) is not None:
            return ""
    except ValueError as e:  # an unknown timm backbone in BASE+TIMM_NAME
        return str(e)
    close = nearest_names(identifier, list_models())
    hint = f"did you mean {close}? " if close else ""
    return (f"unknown model {name!r}: {hint}"
            "see `python -c 'import open_clip; print(open_clip.list_models())'` for the names")


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Stop before training, with ``parser.error`` (one line), on flags that can't work together."""
    error = _check_model_name(args.model)
    if error:
        parser.error(error)
    from .distill import distillation_requested, translate_upstream_flags

    if args.loss is None:
        if distillation_requested(args):
            parser.error("--distill-teacher / --distill-cache work with the plugin's objectives: add --loss "
                         "(e.g. --loss clip)")
        return
    translate_upstream_flags(args)
    from ..losses.distill import check_distill_args
    from ..models.teachers import check_teacher_spec

    try:
        check_distill_args(args)
    except ValueError as e:
        parser.error(str(e))
    for spec in args.distill_teacher or []:
        error = check_teacher_spec(spec)
        if error:
            parser.error(error)
    if args.distill_cache and args.dataset_type not in ("webdataset", "auto"):
        parser.error(f"--distill-cache reads webdataset shards; got --dataset-type {args.dataset_type}")
    if args.siglip and args.loss != "siglip":
        parser.error(f"--siglip conflicts with --loss {args.loss}; drop --siglip (or use --loss siglip)")
    if args.loss == "siglip":
        args.siglip = True  # upstream keys the SigLIP logit bias init on --siglip
    from ..losses import get_loss_entry

    entry = get_loss_entry(args.loss)
    if entry.check_args is not None:
        try:
            entry.check_args(args)
        except ValueError as e:
            parser.error(str(e))

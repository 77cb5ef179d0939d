"""The plugin's ``open_clip_train`` flags: definitions and the checks run right after parsing.

Plain argparse; :mod:`.hooks` adds them to upstream's parser.
"""
import argparse
import logging

__all__ = ["add_args", "check_args", "warn_idle_flags"]


def add_args(parser: argparse.ArgumentParser) -> None:
    from ..losses import get_loss_entry, list_losses

    first = len(parser._actions)
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
    for action in parser._actions[first:]:  # --help shows every plugin flag's default
        if action.help and action.default is not None and "default" not in action.help:
            action.help += " (default: %(default)s)"


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
    from .distill import check_distillation

    try:
        check_distillation(args)
    except ValueError as e:
        parser.error(str(e))
    if args.loss is not None:
        _check_loss_args(args, parser)
    warn_idle_flags(args)
    from .shard_check import check_data_args, parsed_by_the_trainer

    if parsed_by_the_trainer():  # not a planned run's settings: its shards may not exist yet
        try:
            check_data_args(args)  # before the run folder is made: a typo'd --train-data stops here
        except ValueError as e:
            parser.error(str(e))


def _check_loss_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
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


def warn_idle_flags(args: argparse.Namespace) -> None:
    """Logs one warning per plugin flag that trains nothing in this run, and per absurd loss weight
    (:func:`~open_clip_lightclip.losses.flag_warnings`); both routes call it once, after the checks."""
    from ..losses import flag_warnings

    for line in flag_warnings(args):
        logging.warning(line)

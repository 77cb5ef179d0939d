"""The plugin's ``open_clip_train`` flags: definitions and the checks run right after parsing.

Plain argparse; :mod:`.hooks` adds them to upstream's parser.
"""
import argparse
import difflib

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


def _check_model_name(name: str) -> str:
    """Empty string when ``name`` is a model OpenCLIP can build, else a one-line error."""
    from open_clip.factory import get_model_config, list_models, parse_model_name

    schema, identifier = parse_model_name(name)
    if schema is not None or get_model_config(identifier.replace("/", "-")) is not None:
        return ""
    close = difflib.get_close_matches(identifier, list_models(), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return (f"unknown model {name!r}: {hint}"
            "see `python -c 'import open_clip; print(open_clip.list_models())'` for the names")


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Stop before training, with ``parser.error`` (one line), on flags that can't work together."""
    error = _check_model_name(args.model)
    if error:
        parser.error(error)
    if args.loss is None:
        return
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

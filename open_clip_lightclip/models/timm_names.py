"""Any timm backbone as a LightCLIP image tower, by name: ``BASE+TIMM_NAME``.

``LightCLIP-MNv3+ghostnetv3_100`` is the config ``LightCLIP-MNv3`` (its text tower, embedding
width, image size) with ``ghostnetv3_100`` as the image trunk. Every name-taking entry point
accepts it (``open_clip.create_model_and_transforms``, ``get_tokenizer``, the trainer's ``--model``,
``clip_benchmark --model``, ``export``): the seam resolves it when OpenCLIP looks the config up.
"""
import difflib
from typing import Callable, Iterable, Optional, Tuple

__all__ = ["SEPARATOR", "UnknownBackbone", "nearest_names", "split_timm_name", "timm_model_config"]

SEPARATOR = "+"


class UnknownBackbone(ValueError):
    """A ``BASE+TIMM_NAME`` whose base or timm name does not exist (one line, with the nearest names)."""


def nearest_names(name: str, names: Iterable[str], cutoff: float = 0.5) -> str:
    """Up to three of ``names`` closest to ``name``, as ``"A or B or C"`` for a did-you-mean hint; '' if none."""
    return " or ".join(difflib.get_close_matches(name, list(names), n=3, cutoff=cutoff))


def split_timm_name(name: str) -> Optional[Tuple[str, str]]:
    """``(base, timm name)`` of a ``BASE+TIMM_NAME`` model name, else None."""
    base, sep, timm_name = name.partition(SEPARATOR)
    return (base, timm_name) if sep and base and timm_name else None


def timm_model_config(name: str, base_config: Callable[[str], Optional[dict]]) -> Optional[dict]:
    """The model config of ``BASE+TIMM_NAME`` (``base_config`` looks a config up by name); None for other names."""
    parts = split_timm_name(name)
    if parts is None:
        return None
    base, timm_name = parts
    cfg = base_config(base)
    if cfg is None or "timm_model_name" not in cfg.get("vision_cfg", {}):
        raise UnknownBackbone(f"model {name!r}: {base!r} is not a LightCLIP config with a timm image tower; write "
                              f"e.g. LightCLIP-MNv3{SEPARATOR}{timm_name}")
    import timm

    if not timm.is_model(timm_name.split(".")[0]):
        close = nearest_names(timm_name, timm.list_models(), cutoff=0.6)
        hint = f" (did you mean {close}?)" if close else ""
        raise UnknownBackbone(f"model {name!r}: timm has no model {timm_name!r}{hint}; see timm.list_models()")
    cfg["vision_cfg"]["timm_model_name"] = timm_name
    return cfg

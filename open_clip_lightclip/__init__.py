"""open-clip-lightclip: lightweight CLIP training (LightCLIP, CLIP-Lite) as an OpenCLIP plugin.

Importing this package is never required: after ``pip install`` the plugin registers itself
when ``open_clip`` is imported. Heavy modules (torch, timm) load lazily on attribute access.
"""
import os as _os

from .version import __version__

_LAZY = {
    "LightCLIP": "models",
    "TimmCNNTower": "models",
    "register_loss": "losses",
    "create_loss": "losses",
    "list_losses": "losses",
    "register_model_class": "models",
    "get_model_class": "models",
}

if _os.environ.get("OPEN_CLIP_LIGHTCLIP_DISABLE", "0").lower() not in ("1", "true", "yes"):
    from .upstream import autoload  # noqa: F401  (installs the import hook; imports no torch)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'open_clip_lightclip' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]

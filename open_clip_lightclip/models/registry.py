"""Model classes chosen by a model config's ``"model_class"`` key, and the training-only module names.

Upstream OpenCLIP builds ``CLIP`` for every config; a config with ``"model_class": NAME``
builds the class registered here under NAME (the seam routes ``open_clip.factory.CLIP`` here).
"""
from typing import Callable, Dict, Type

import torch.nn as nn

__all__ = ["register_model_class", "get_model_class", "list_model_classes", "TRAINING_ONLY_MODULES"]

# Attribute names of training-only submodules (objective heads, critics, discriminators) on a
# model. ``encode_image`` / ``encode_text`` never run them; export drops every state_dict key
# under them, and inference models are built without them.
TRAINING_ONLY_MODULES = ("lightclip_train", "cliplite_prior", "distill_projector")

_MODEL_CLASSES: Dict[str, Type[nn.Module]] = {}


def register_model_class(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: make ``"model_class": name`` in a model config build this class."""

    def _register(cls):
        _MODEL_CLASSES[name] = cls
        return cls

    return _register


def get_model_class(name: str) -> Type[nn.Module]:
    try:
        return _MODEL_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown model_class {name!r} in model config; known: {sorted(_MODEL_CLASSES)}") from None


def list_model_classes():
    """Names registered with :func:`register_model_class`, sorted."""
    return sorted(_MODEL_CLASSES)

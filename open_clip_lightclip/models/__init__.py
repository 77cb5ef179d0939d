"""Models: the LightCLIP model and the model-class registry, towers (and ``BASE+TIMM_NAME`` configs), fusion,
training-only heads, distillation teachers and their forward hooks, checkpoint reading.

Plain PyTorch (+ timm, and OpenCLIP's own building blocks); imports nothing of this package
outside ``models/``. Importing this package registers every model class.
"""
from .registry import TRAINING_ONLY_MODULES, get_model_class, list_model_classes, register_model_class
from .lightclip import LightCLIP, text_word_mask
from .towers import TimmCNNTower

__all__ = ["LightCLIP", "TimmCNNTower", "text_word_mask", "register_model_class", "get_model_class",
           "list_model_classes", "TRAINING_ONLY_MODULES"]

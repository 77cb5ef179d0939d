"""Held-out evaluation of a trainer checkpoint with clip_benchmark's metrics.

Image->text and text->image recall@1/5/10 on the held-out split and zero-shot top-1 accuracy over the held-out
images' categories and, when the Debian package is there, Fashion-MNIST's test split. The metrics themselves live
in :mod:`open_clip_lightclip.export.evaluate` (shared with ``bench inference --onnx-dir``); this module loads a
checkpoint and runs them.
"""
from typing import Optional

from ..export.evaluate import (CLIPART_TEMPLATES, FASHION_TEMPLATES, IGNORED_CATEGORIES, evaluate_model,
                               load_eval_data, retrieval_metrics, zeroshot_accuracy)

__all__ = ["IGNORED_CATEGORIES", "CLIPART_TEMPLATES", "FASHION_TEMPLATES", "load_eval_data", "retrieval_metrics",
           "zeroshot_accuracy", "evaluate_model", "evaluate_checkpoint"]


def evaluate_checkpoint(model_name: str, checkpoint: str, image_size: Optional[int], data: dict) -> dict:
    """Every metric of :func:`evaluate_model` for a trainer checkpoint (``image_size``: the run's forced size)."""
    import open_clip
    import torch

    kwargs = {"force_image_size": image_size} if image_size else {}
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint, **kwargs)
    model.eval()
    with torch.no_grad():
        return evaluate_model(model, preprocess, open_clip.get_tokenizer(model_name), data)

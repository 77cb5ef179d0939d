"""A LightCLIP model as a stock OpenCLIP ``CLIP``: a config without ``model_class`` and its state_dict.

Upstream's ``TimmModel`` has a route that avoids its projection bug (the projection sized from
``num_features``): with ``timm_proj`` empty and no attention pooling it builds the trunk with
``num_classes=embed_dim`` and uses the network's own classifier as the projection. The plugin's tower
is that same trunk with ``num_classes=0`` plus ``proj`` after the pre-logits, so ``visual.proj`` is
written into the classifier (zero bias):

* ``nn.Linear`` classifiers (MobileNetV3 / V4, EfficientNet, FastViT-MCi, MobileOne, EfficientViT and most
  timm CNNs): ``classifier.weight = proj.weight``;
* ``nn.Conv2d`` 1x1 classifiers: the same weight as a 1x1 kernel;
* RepViT's ``RepVitClassifier`` (BatchNorm1d + Linear, twice with its distillation head, averaged): both
  heads get the projection behind an identity BatchNorm.

``timm_proj: "none"`` maps to upstream's ``"none"`` (the trunk's pre-logits), ``"mlp"`` to upstream's
``Mlp`` where the trunk's ``num_features`` equals what its head emits. Upstream has no fused
(reparameterised) deploy form, so reparameterisable towers (MobileOne, FastViT-MCi, RepViT) are written
in their training form: the same embeddings; the fused form is what ``--onnx`` writes.
The text tower's keys lose their ``text.`` prefix (upstream ``CLIP`` keeps them at the top level).
"""
import copy
import math
from typing import Dict, Tuple

import torch
import torch.nn as nn

__all__ = ["StockExportError", "stock_config", "stock_state_dict", "to_stock", "verify_without_plugin"]

_STOCK_VISION_KEYS = ("image_size", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj",
                      "timm_proj_bias", "timm_drop", "timm_drop_path")


class StockExportError(RuntimeError):
    """The model cannot be written as a stock OpenCLIP model; the message says why (one line)."""


def stock_config(model_cfg: dict) -> dict:
    """The stock OpenCLIP config of a LightCLIP ``model_cfg``: no ``model_class``, upstream vision keys only."""
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("model_class", None)
    vision = cfg.get("vision_cfg", {})
    if vision.pop("timm_reparameterized", False):
        raise StockExportError("the image tower is stored fused (timm_reparameterized); upstream OpenCLIP builds "
                               "only the training form: export the unfused checkpoint, or use --plugin-format")
    extra = sorted(set(vision) - set(_STOCK_VISION_KEYS))
    if extra:
        raise StockExportError(f"vision_cfg keys {extra} have no upstream OpenCLIP equivalent; use --plugin-format")
    proj = vision.get("timm_proj", "linear")
    if vision.get("timm_pool") in ("abs_attn", "rot_attn"):
        raise StockExportError(f"timm_pool={vision['timm_pool']!r} is not a pooling the plugin's tower has")
    if proj == "linear":
        vision["timm_proj"] = ""  # the trunk's own classifier is the projection
    elif proj in ("none", "", None):
        vision["timm_proj"] = "none"
    vision["timm_model_pretrained"] = False  # the weights come from the file
    return cfg


def _identity_batchnorm(bn: nn.BatchNorm1d) -> None:
    """Eval-mode BatchNorm that returns its input (up to one rounding): (x - 0) / s * s."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.weight.fill_(math.sqrt(1.0 + bn.eps))
    bn.bias.zero_()


@torch.no_grad()
def _write_projection(classifier: nn.Module, weight: torch.Tensor, bias) -> None:
    """Make ``classifier`` compute ``x @ weight.T + bias`` on the trunk's pre-logits."""
    bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias
    if isinstance(classifier, nn.Linear) and classifier.weight.shape == weight.shape:
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)
    elif isinstance(classifier, nn.Conv2d) and classifier.weight.shape == (*weight.shape, 1, 1):
        classifier.weight.copy_(weight[:, :, None, None])
        classifier.bias.copy_(bias)
    elif type(classifier).__name__ == "RepVitClassifier":
        for head in (classifier.head, getattr(classifier, "head_dist", None)):
            if head is not None:
                _identity_batchnorm(head.bn)
                _write_projection(head.l, weight, bias)
    else:
        raise StockExportError(
            f"the trunk's classifier is a {type(classifier).__name__} (shape of the projection "
            f"{tuple(weight.shape)}), which the export cannot turn into the projection; use --plugin-format")


def _classifier(trunk: nn.Module) -> nn.Module:
    if type(getattr(trunk, "head", None)).__name__ == "RepVitClassifier":
        return trunk.head
    return trunk.get_classifier()


@torch.no_grad()
def stock_state_dict(model: nn.Module, stock: nn.Module, cfg: dict) -> Dict[str, torch.Tensor]:
    """``stock`` (an upstream ``CLIP`` built from :func:`stock_config`) loaded with ``model``'s weights;
    returns its state_dict. ``model`` is a LightCLIP in its training (unfused) form."""
    source = model.state_dict()
    custom_text = "text.transformer.resblocks.0.ln_1.weight" in stock.state_dict()
    mapped = {}
    for key, value in source.items():
        if key.startswith("visual.proj."):
            continue
        if key.startswith("text.") and not custom_text:
            key = key[len("text."):]
        mapped[key] = value
    proj = model.visual.proj
    route = cfg["vision_cfg"].get("timm_proj")
    written = None
    if route == "":
        classifier = _classifier(stock.visual.trunk)
        _write_projection(classifier, proj.weight, proj.bias)
        written = classifier
    elif route == "mlp":
        mlp = stock.visual.head.mlp
        if mlp.fc1.weight.shape != proj[0].weight.shape:
            raise StockExportError(
                f"timm_proj='mlp': upstream sizes the MLP from num_features ({mlp.fc1.weight.shape[1]}) but the "
                f"trunk emits {proj[0].weight.shape[1]} (upstream's projection bug); use --plugin-format")
        for i, fc in ((0, mlp.fc1), (2, mlp.fc2)):
            _write_projection(fc, proj[i].weight, proj[i].bias)
        written = mlp
    target = stock.state_dict()
    if written is not None:  # the projection now lives in the stock model's own module
        prefix = next(f"visual.{n}." for n, m in stock.visual.named_modules() if m is written)
        mapped.update({k: v for k, v in target.items() if k.startswith(prefix)})
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    if missing or unexpected:
        raise StockExportError(f"the weights do not map onto upstream's model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}); use --plugin-format")
    stock.load_state_dict(mapped, strict=True)
    return {k: v.detach().cpu().contiguous() for k, v in stock.state_dict().items()}


def to_stock(model: nn.Module, model_cfg: dict) -> Tuple[nn.Module, dict, Dict[str, torch.Tensor]]:
    """``(stock CLIP, its config, its state_dict)`` of a LightCLIP ``model`` (eval mode, training form)."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = stock_config(model_cfg)
    build = {k: v for k, v in cfg.items() if k != "custom_text"}
    stock = (CustomTextCLIP if cfg.get("custom_text") else CLIP)(**build).eval()
    return stock, cfg, stock_state_dict(model, stock, cfg)


_VERIFY = r"""
import sys, torch
import open_clip
out, inputs, result = sys.argv[1:4]
assert 'open_clip_lightclip' not in sys.modules, 'the plugin was imported'
model, _, preprocess = open_clip.create_model_and_transforms('local-dir:' + out)
tokenizer = open_clip.get_tokenizer('local-dir:' + out)
x = torch.load(inputs, weights_only=True)
with torch.no_grad():
    got = {'image': model.eval().encode_image(x['images']), 'text': model.encode_text(x['texts'])}
got.update(cls=type(model).__name__, plugin='open_clip_lightclip' in sys.modules,
           context_length=tokenizer.context_length)
torch.save(got, result)
"""


def verify_without_plugin(out_dir, images: torch.Tensor, texts: torch.Tensor, timeout: float = 600) -> dict:
    """Load ``out_dir`` with ``open_clip.create_model_and_transforms('local-dir:OUT')`` in a fresh interpreter
    with the plugin off (``OPEN_CLIP_LIGHTCLIP_DISABLE=1``; checked: ``open_clip_lightclip`` never imported) and
    return its embeddings of ``images`` / ``texts`` (``image``, ``text``) and the model class it built."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        inputs, result = Path(tmp) / "inputs.pt", Path(tmp) / "result.pt"
        torch.save({"images": images, "texts": texts}, inputs)
        env = {**os.environ, "OPEN_CLIP_LIGHTCLIP_DISABLE": "1"}
        proc = subprocess.run([sys.executable, "-c", _VERIFY, str(out_dir), str(inputs), str(result)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise StockExportError(f"{out_dir}: OpenCLIP without the plugin cannot load it: {last}")
        got = torch.load(result, weights_only=True)
    if got["plugin"]:
        raise StockExportError("the plugin-free check imported open_clip_lightclip; it proves nothing")
    return got

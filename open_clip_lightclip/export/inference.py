"""Export a trainer checkpoint as an inference-only OpenCLIP model (and optionally ONNX encoders).

The output folder has the layout OpenCLIP's ``local-dir:`` and ``hf-hub:`` loaders read and
``open_clip.push_to_hf_hub`` writes:

* ``open_clip_config.json``: ``{"model_cfg": ..., "preprocess_cfg": ...}``;
* ``open_clip_model.safetensors``: the inference model's state_dict (no training-only modules);
* with ONNX: ``image_encoder.onnx`` (``image`` -> ``image_features``) and ``text_encoder.onnx``
  (``text`` -> ``text_features``), both un-normalised like ``encode_image`` / ``encode_text``.

By default the model is a stock OpenCLIP ``CLIP`` (see :mod:`.stock`): ``open_clip.create_model_and_transforms(
'local-dir:OUT_DIR')`` builds it without this plugin. ``plugin_format`` keeps the plugin's layout
(``model_class: LightCLIP``, reparameterisable towers fused), which needs the plugin to load.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..data.owned import OutputFolder
from ..models.checkpoint import CheckpointError, read_state_dict, run_create_kwargs, run_params, training_only_module
from .precision import (CALIBRATION_EXAMPLE, INT8_IMAGE_MODES, PRECISIONS, PrecisionError, PrecisionResult,
                        calibration_images, check_calibration_data, check_precisions, compare_precisions,
                        eval_transform, held_out_batch, precision_files, summarize, write_precisions)
from .hub import CARD_NAME, HubError, card_metadata, front_matter, held_out_metrics, model_card, push
from .stock import StockExportError, to_stock, verify_without_plugin

__all__ = ["ExportError", "ExportReport", "export_checkpoint", "export_model", "export_onnx", "run_params", "write_stock",
           "CONFIG_NAME", "WEIGHTS_NAME", "IMAGE_ONNX", "TEXT_ONNX"]

CONFIG_NAME = "open_clip_config.json"  # open_clip.constants.HF_CONFIG_NAME
WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class ExportError(RuntimeError):
    """Export cannot proceed; the message is one line."""


@dataclass
class ExportReport:
    model_name: str
    out_dir: Path
    params_before: int  # in the checkpoint, training-only modules included
    params_training_only: Dict[str, int]  # per training-only module
    params_after: int  # in the exported model
    max_abs_diff: float  # embeddings: checkpoint vs exported (reloaded via local-dir:)
    onnx_max_abs_diff: Dict[str, float] = field(default_factory=dict)
    onnx_precisions: List[PrecisionResult] = field(default_factory=list)
    onnx_methods: Dict[str, str] = field(default_factory=dict)  # fp16 / int8 file name -> how it was made
    reparameterized: Optional[dict] = None  # params / image MACs before and after fusing, max |diff| of embeddings
    format: str = "stock"  # "stock" (upstream OpenCLIP, no model_class) or "plugin" (model_class: LightCLIP)


def image_macs(model: nn.Module, images: torch.Tensor) -> int:
    """Multiply-accumulates of ``encode_image`` (``FlopCounterMode`` FLOPs / 2: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.encode_image(images)
    return counter.get_total_flops() // 2


def reparameterize_for_inference(model: nn.Module, model_cfg: dict, images: torch.Tensor,
                                 texts: torch.Tensor, atol: float = 1e-4) -> Optional[dict]:
    """Fuse a reparameterisable image tower (MobileOne, FastViT-MCi, RepViT) in place, record it in
    ``model_cfg`` (``timm_reparameterized``) and check the unit-norm embeddings against the unfused model;
    None when the tower has nothing to fuse."""
    visual = model.visual
    if not getattr(visual, "reparameterizable", False):
        return None
    one = images[:1]
    before = {"params": sum(p.numel() for p in visual.parameters()), "macs": image_macs(model, one)}
    with torch.no_grad():
        reference = model.encode_image(images, normalize=True)
        visual.reparameterize()
        fused = model.encode_image(images, normalize=True)
    diff = float((fused - reference).abs().max())
    if diff > atol:
        raise ExportError(f"fusing the reparameterisable image tower changed the embeddings (max |diff| {diff:.2e} "
                          f"> {atol}); export without it is not possible yet: please report this model")
    model_cfg["vision_cfg"]["timm_reparameterized"] = True
    after = {"params": sum(p.numel() for p in visual.parameters()), "macs": image_macs(model, one)}
    return {"before": before, "after": after, "max_abs_diff": diff}


def _model_cfg(model_name: str, kwargs: Dict[str, object], state_dict: Dict[str, torch.Tensor]) -> dict:
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ExportError(f"unknown model {model_name!r}; see `open-clip-lightclip list-models`")
    if "force_image_size" in kwargs:
        cfg["vision_cfg"]["image_size"] = kwargs["force_image_size"]
    if "force_context_length" in kwargs:
        cfg["text_cfg"]["context_length"] = kwargs["force_context_length"]
    if kwargs.get("force_quick_gelu"):
        cfg["quick_gelu"] = True
    if kwargs.get("force_custom_text"):
        cfg["custom_text"] = True
    if "logit_bias" in state_dict:  # trained with a SigLIP loss: the inference model keeps its bias
        cfg["init_logit_bias"] = float(state_dict["logit_bias"].reshape(-1)[0])
    for name in ("timm_model_pretrained", "hf_model_pretrained"):  # the weights come from the file
        cfg.get("vision_cfg", {}).pop(name, None)
        cfg.get("text_cfg", {}).pop(name, None)
    return cfg


def _count(state_dict: Dict[str, torch.Tensor], buffers=()) -> int:
    return sum(v.numel() for k, v in state_dict.items()
               if k not in buffers and not k.endswith(_BUFFER_SUFFIXES))


def _probe_inputs(model: nn.Module, context_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    size = getattr(model.visual, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.randn(2, 3, h, w, generator=gen)
    texts = torch.randint(1, 49000, (2, context_length), generator=gen)
    texts[:, 0] = 49406  # SOT
    texts[0, 5], texts[1, context_length - 1] = 49407, 49407  # EOT (argmax pooling)
    texts[0, 6:] = 0
    return images, texts


@torch.no_grad()
def _embed(model: nn.Module, images: torch.Tensor, texts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return model.encode_image(images), model.encode_text(texts)


def export_model(model: nn.Module, model_cfg: dict, out_dir) -> None:
    """Write ``open_clip_config.json`` (as ``push_to_hf_hub`` does) and ``open_clip_model.safetensors`` in the
    plugin's layout (``model_cfg`` as given). ``out_dir``: a folder path or an :class:`OutputFolder`."""
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    leaked = sorted({training_only_module(k) for k in state_dict} - {None})
    if leaked:
        raise ExportError(f"inference model still has training-only modules {leaked}")
    _write_weights_and_config(model, state_dict, model_cfg, out_dir)


def _write_weights_and_config(model: nn.Module, state_dict: Dict[str, torch.Tensor], model_cfg: dict, out_dir) -> None:
    """``open_clip_model.safetensors`` and ``open_clip_config.json`` (as ``push_to_hf_hub`` writes them) in
    ``out_dir`` (a folder path, or an :class:`OutputFolder` that records them as its own), world-readable."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    if isinstance(out_dir, OutputFolder):
        weights, config = out_dir.claim(out_dir.path / WEIGHTS_NAME), out_dir.claim(out_dir.path / CONFIG_NAME)
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        weights, config = Path(out_dir) / WEIGHTS_NAME, Path(out_dir) / CONFIG_NAME
    save_file(state_dict, str(weights))
    save_config_for_hf(model, config, model_config=model_cfg)
    for path in (weights, config):
        path.chmod(FILE_MODE)


class _ImageEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.encode_image(image)


class _TextEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, text):
        return self.model.encode_text(text)


def export_onnx(model: nn.Module, out_dir: Path, context_length: int, opset: int = 17,
                verify: bool = True) -> Dict[str, float]:
    """Write the image and text encoders as ONNX; with onnxruntime installed, return the max
    absolute difference of its outputs from PyTorch's (another batch size than the traced one)."""
    import warnings

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("--onnx needs the onnx package: pip install onnx onnxruntime (or: pip install -e '.[onnx]' "
                          "in a checkout)") from None
    model.eval()
    images, texts = _probe_inputs(model, context_length)
    specs = [
        (_ImageEncoder(model).eval(), images, "image", "image_features", out_dir / IMAGE_ONNX),
        (_TextEncoder(model).eval(), texts, "text", "text_features", out_dir / TEXT_ONNX),
    ]
    for module, example, inp, outp, path in specs:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[inp], output_names=[outp],
                              dynamic_axes={inp: {0: "batch"}, outp: {0: "batch"}})
    diffs = {}
    if not verify:
        return diffs
    try:
        import onnxruntime as ort
    except ImportError:
        return diffs
    images3 = torch.cat([images, images.flip(0)[:1] * 0.5])  # a batch size other than the traced one
    texts3 = torch.cat([texts, texts[:1]])
    ref_image, ref_text = _embed(model, images3, texts3)
    for (module, _, inp, _, path), x, ref in zip(specs, (images3, texts3), (ref_image, ref_text)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {inp: x.numpy()})[0]
        diffs[path.name] = float((torch.from_numpy(out) - ref).abs().max())
    return diffs


EXPORT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) + tuple(n for p in PRECISIONS for n in precision_files(p))
FILE_MODE = 0o644  # world-readable, as a published model is


def write_stock(model: nn.Module, model_cfg: dict, out_dir) -> Tuple[nn.Module, dict]:
    """Write ``model`` (LightCLIP in its training form, eval mode) as a stock OpenCLIP model into ``out_dir``
    (a path or an :class:`OutputFolder`); returns the stock ``CLIP`` and its config."""
    stock, cfg, state_dict = to_stock(model, model_cfg)
    _write_weights_and_config(model, state_dict, cfg, out_dir)
    return stock, cfg


def export_checkpoint(
        checkpoint,
        out_dir,
        model_name: Optional[str] = None,
        onnx: bool = False,
        onnx_precision: Sequence[str] = ("fp32",),
        force: bool = False,
        plugin_format: bool = False,
        license: str = "mit",
        push_repo: Optional[str] = None,
        private: bool = False,
        calibration_data: Optional[str] = None,
        calibration_samples: int = 256,
        int8_image: Optional[str] = None,
        log: Callable[[str], None] = print,
) -> ExportReport:
    """Export ``checkpoint`` (a trainer ``epoch_N.pt``, a state_dict or a ``.safetensors``) to ``out_dir``.

    By default the folder is a stock OpenCLIP model (no ``model_class``: OpenCLIP builds it without this
    plugin, checked in a plugin-free interpreter); ``plugin_format`` writes the plugin's own layout
    (``model_class: LightCLIP``, reparameterisable towers fused). The model name defaults to the ``model``
    of the run's ``params.txt`` (next to ``checkpoints/``), as do ``--force-image-size`` /
    ``--force-context-length`` and the image mean / std / interpolation the run was trained with.
    ``out_dir`` may hold only files an earlier export wrote (``force``: others too; never written over).
    A stock export also gets a model card (``README.md``); ``push_repo`` uploads it to the Hugging Face Hub.
    ``onnx_precision`` (with ``onnx``): fp16 / int8 encoders beside the fp32 ones, each compared with fp32 PyTorch.
    The int8 image tower is static QDQ calibrated on the first ``calibration_samples`` images of the webdataset
    shards ``calibration_data`` (a brace pattern) when given, else dynamic; ``int8_image`` forces the mode.
    """
    import open_clip

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if push_repo and plugin_format:
        raise ExportError("--push publishes the stock OpenCLIP model; drop --plugin-format")
    precisions = check_precisions(onnx_precision) if onnx else []
    _check_int8_options(precisions, calibration_data, calibration_samples, int8_image)
    folder = OutputFolder(out_dir, "export", writes=lambda name: name in EXPORT_FILES, force=force)
    try:
        folder.check()
    except FileExistsError as e:
        raise ExportError(str(e)) from None
    state_dict = read_state_dict(checkpoint)
    params = run_params(checkpoint)
    if model_name is None:
        model_name = params.get("model")
        if not model_name:
            raise ExportError(f"{checkpoint}: no params.txt of a trainer run next to it; pass --model NAME")
        log(f"model: {model_name} (from {checkpoint.resolve().parent.parent / 'params.txt'})")
    kwargs = run_create_kwargs(params) if params.get("model") == model_name else {}
    model_cfg = _model_cfg(model_name, kwargs, state_dict)
    extra = {"init_logit_bias": model_cfg["init_logit_bias"]} if "init_logit_bias" in model_cfg else {}
    model = open_clip.create_model(model_name, pretrained=str(checkpoint), **kwargs, **extra).eval()

    inference_keys = set(model.state_dict())
    buffers = {n for n, _ in model.named_buffers()}
    training_only: Dict[str, int] = {}
    for key, value in state_dict.items():
        module = training_only_module(key)
        if module is not None and key not in inference_keys and not key.endswith(_BUFFER_SUFFIXES):
            training_only[module] = training_only.get(module, 0) + value.numel()
    before = _count(state_dict, buffers)
    context_length = model_cfg["text_cfg"].get("context_length", 77)
    images, texts = _probe_inputs(model, context_length)
    folder.remove_own()  # files of an earlier export here (never another file)

    fused = None
    if plugin_format:
        fused = _reparameterize(model, model_cfg, images, texts, log)
        after = sum(p.numel() for p in model.parameters())
        export_model(model, model_cfg, folder)
        reloaded = open_clip.create_model(f"local-dir:{out_dir}").eval()
        expected, got = _embed(model, images, texts), _embed(reloaded, images, texts)
        how = "reloaded via local-dir: (with the plugin)"
        tol = 1e-6
    else:
        try:
            stock, stock_cfg = write_stock(model, model_cfg, folder)
            expected = _embed(model, images, texts)
            result = verify_without_plugin(out_dir, images, texts)
        except StockExportError as e:
            raise ExportError(f"{model_name}: cannot export as a stock OpenCLIP model: {e}") from None
        got = result["image"], result["text"]
        after = sum(p.numel() for p in stock.parameters())
        how = f"reloaded by OpenCLIP without the plugin as {result['cls']} (OPEN_CLIP_LIGHTCLIP_DISABLE=1)"
        tol = 1e-5
        route = {"": "the trunk's own classifier is the projection", "none": "no projection",
                 "mlp": "upstream's MLP projection"}.get(stock_cfg["vision_cfg"].get("timm_proj"), "")
        log(f"stock OpenCLIP model: {stock_cfg['vision_cfg']['timm_model_name']} through upstream's TimmModel "
            f"({route}); no model_class, loads without open-clip-lightclip")
        notes = []
        if getattr(model.visual, "reparameterizable", False):
            notes.append(f"`{stock_cfg['vision_cfg']['timm_model_name']}` is reparameterisable: stock OpenCLIP has "
                         "no fused form, so these weights are the unfused (training) form, with the same "
                         "embeddings" + ("; `image_encoder.onnx` is the fused graph." if onnx else "."))
            log("note: upstream OpenCLIP has no fused (reparameterised) form of this tower: the weights are written "
                "unfused (its training form, the same embeddings); " + (
                    "the ONNX files below are fused" if onnx else "--onnx writes the fused graph, "
                    "--plugin-format the fused weights for the plugin"))
    diff = max(float((a - b).abs().max()) for a, b in zip(expected, got))
    if diff > tol:
        raise ExportError(f"{out_dir}: reloaded model differs from the checkpoint (max |diff| {diff:.2e} > {tol})")

    removed = ", ".join(f"{k} {v:,}" for k, v in training_only.items()) or "none in the checkpoint"
    log(f"parameters before: {before:,} in {checkpoint} (training-only: {removed})")
    log(f"parameters after:  {after:,} in {out_dir / WEIGHTS_NAME}")
    log(f"wrote {out_dir / CONFIG_NAME} and {out_dir / WEIGHTS_NAME}; {how}, embeddings max |diff| {diff:.1e}")
    report = ExportReport(model_name, out_dir, before, training_only, after, diff, reparameterized=fused,
                          format="plugin" if plugin_format else "stock")
    if onnx:
        if not plugin_format:
            report.reparameterized = _reparameterize(model, model_cfg, images, texts, log)
        for name in (IMAGE_ONNX, TEXT_ONNX):
            folder.claim(out_dir / name)
        report.onnx_max_abs_diff = export_onnx(model, out_dir, context_length)
        worst = max(report.onnx_max_abs_diff.values(), default=0.0)
        if worst > 1e-4:
            raise ExportError(f"{out_dir}: onnxruntime outputs differ from PyTorch (max |diff| {worst:.2e} > 1e-4)")
        if report.onnx_max_abs_diff:
            shown = ", ".join(f"{k} max |diff| {v:.1e}" for k, v in report.onnx_max_abs_diff.items())
            log(f"wrote {out_dir / IMAGE_ONNX} and {out_dir / TEXT_ONNX}; onnxruntime vs PyTorch: {shown}")
        else:
            log(f"wrote {out_dir / IMAGE_ONNX} and {out_dir / TEXT_ONNX} (onnxruntime not installed: not verified)")
        if len(precisions) > 1:
            calibration = None
            if "int8" in precisions and calibration_data and int8_image != "dynamic":
                cfg = getattr(model.visual, "preprocess_cfg", None) or {}
                calibration = calibration_images(calibration_data, calibration_samples + _CHECK_IMAGES,
                                                 eval_transform(getattr(model.visual, "image_size", 224), cfg))
                # the last few images read check the precisions (real images the calibration did not see): a
                # static int8 tower is calibrated for the user's images, not for synthetic shapes
                if len(calibration) > 2 * _CHECK_IMAGES:
                    calibration, checked = calibration[:-_CHECK_IMAGES], calibration[-_CHECK_IMAGES:]
                else:
                    checked = None
            written = write_precisions(out_dir, precisions, claim=folder.claim, calibration=calibration,
                                       calibration_source=calibration_data or "", int8_image=int8_image)
            if "int8" in precisions:
                log(_int8_line(calibration, calibration_data, int8_image))
            held_images, held_texts = held_out_batch(model, model_name, context_length)
            what = f"{len(held_images)} synthetic shapes"
            if calibration is not None and checked is not None:
                held_images = torch.from_numpy(checked)
                what = f"{len(held_images)} images of --calibration-data the calibration did not use"
            report.onnx_precisions = compare_precisions(model, out_dir, precisions, held_images, held_texts)
            report.onnx_methods = {p.name: how for p, how in written.items()}
            log(f"ONNX precisions on {what} and {len(held_texts)} synthetic captions (fp16: keep_io_types; "
                "int8 as above):")
            for line in summarize(report.onnx_precisions):
                log("  " + line)
    if not plugin_format:
        if onnx:
            notes.append(f"ONNX encoders: `{IMAGE_ONNX}` (`image` -> `image_features`) and `{TEXT_ONNX}` "
                         "(`text` -> `text_features`), un-normalised like `encode_image` / `encode_text`.")
            for r in report.onnx_precisions:
                if r.precision != "fp32":
                    how = report.onnx_methods.get(r.path.name, r.precision)
                    notes.append(f"`{r.path.name}`: {how}, {r.mb:.2f} MB, min cosine to fp32 "
                                 f"{r.min_cosine:.4f} on held-out synthetic shapes.")
        body = model_card(stock, stock_cfg, model_name, repo_id=push_repo, params=params,
                          metrics=held_out_metrics(checkpoint), license=license, notes=tuple(notes),
                          with_metadata=False)
        meta = card_metadata(stock_cfg, license)
        folder.claim(out_dir / CARD_NAME).write_text(front_matter(meta) + body)
        log(f"wrote {out_dir / CARD_NAME} (model card: metadata, towers, training, held-out metrics, usage)")
    for path in folder.own_files():
        path.chmod(FILE_MODE)
    folder.marker.chmod(FILE_MODE)
    if push_repo:
        try:
            push(out_dir, push_repo, body, meta, private=private, log=log)
        except HubError as e:
            raise ExportError(str(e)) from None
        log(f"pushed {out_dir} to https://huggingface.co/{push_repo} (open_clip.push_to_hf_hub)")
    return report


def _check_int8_options(precisions: Sequence[str], calibration_data: Optional[str], calibration_samples: int,
                        int8_image: Optional[str]) -> None:
    """Refuse, in one line and before anything is written, calibration options that cannot apply."""
    if int8_image is not None and int8_image not in INT8_IMAGE_MODES:
        raise ExportError(f"--int8-image: unknown {int8_image!r}; choose from {' '.join(INT8_IMAGE_MODES)}")
    if (calibration_data or int8_image) and "int8" not in precisions:
        raise ExportError("--calibration-data / --int8-image apply to int8 ONNX: add --onnx-precision fp32 int8")
    if int8_image == "static" and not calibration_data:
        raise ExportError(f"--int8-image static needs calibration images: add --calibration-data {CALIBRATION_EXAMPLE}")
    if calibration_samples < 1:
        raise ExportError(f"--calibration-samples must be >= 1, got {calibration_samples}")
    if calibration_data:
        check_calibration_data(calibration_data)


_CHECK_IMAGES = 8  # images of --calibration-data kept out of the calibration to check each precision


def _int8_line(calibration, calibration_data: Optional[str], int8_image: Optional[str]) -> str:
    if calibration is not None:
        return (f"int8: image tower static QDQ (int8 weights per channel, int8 activations calibrated on "
                f"{len(calibration)} images from {calibration_data}); text tower dynamic")
    if int8_image == "dynamic":
        return "int8: dynamic quantisation for both towers (--int8-image dynamic)"
    return ("int8: dynamic quantisation for both towers: no --calibration-data, so the image tower is dynamic too "
            f"(give --calibration-data {CALIBRATION_EXAMPLE} for static QDQ)")


def _reparameterize(model, model_cfg, images, texts, log) -> Optional[dict]:
    fused = reparameterize_for_inference(model, model_cfg, images, texts)
    if fused is not None:
        b, a = fused["before"], fused["after"]
        log(f"reparameterised the image tower: {b['params']:,} -> {a['params']:,} parameters, "
            f"{b['macs'] / 1e6:,.1f} -> {a['macs'] / 1e6:,.1f} M image MACs at {images.shape[-1]} px; "
            f"unit-norm embeddings max |diff| {fused['max_abs_diff']:.1e} (<= 1e-4)")
    return fused


def main_error(exc: BaseException) -> str:
    """One-line message of an export failure."""
    if isinstance(exc, (ExportError, CheckpointError, StockExportError, HubError, PrecisionError)):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"

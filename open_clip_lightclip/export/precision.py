"""fp16 and int8 copies of the exported ONNX encoders, with their quality cost measured against fp32 PyTorch.

* fp16: ``onnxconverter_common.float16.convert_float_to_float16`` (else ``onnxruntime.transformers.float16``),
  ``keep_io_types=True``: inputs and outputs stay fp32, so callers feed the same arrays.
* int8: the text tower through ``onnxruntime.quantization.quantize_dynamic`` (weights int8, activations quantised
  per batch at run time); the image tower through ``quantize_static`` in the QDQ format (int8 weights per channel,
  int8 activations with ranges calibrated on images from the user's webdataset shards) when calibration images
  are given, else dynamic like the text tower.

Each file is loaded by onnxruntime and its unit-norm embeddings compared with the fp32 PyTorch model's on a
fixed held-out batch (captioned synthetic shapes): the cosine similarity, min over the batch. How a file was made
is written into its ONNX metadata (``open_clip_lightclip.precision``), which ``bench inference --onnx-dir`` prints.
:class:`OnnxCLIP` runs a folder's encoders of one precision with ``encode_image`` / ``encode_text``, so that the
held-out metrics (:mod:`.evaluate`) score it as they score a PyTorch model.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PRECISIONS", "COSINE_THRESHOLD", "INT8_IMAGE_MODES", "METADATA_KEY", "PrecisionResult", "precision_files",
           "check_precisions", "check_calibration_data", "calibration_images", "write_precisions",
           "compare_precisions", "held_out_batch", "eval_transform", "summarize", "read_metadata", "OnnxCLIP",
           "PrecisionError"]

PRECISIONS = ("fp32", "fp16", "int8")
COSINE_THRESHOLD = 0.99  # min cosine to fp32 below which a precision is reported as losing too much
INT8_IMAGE_MODES = ("static", "dynamic")  # how the int8 image tower is quantised (the text tower: always dynamic)
METADATA_KEY = "open_clip_lightclip.precision"  # ONNX metadata: how the file was made
CALIBRATION_EXAMPLE = "'shards/train-{00000..00003}.tar'"
_TOWERS = (("image_encoder", "image", "image_features"), ("text_encoder", "text", "text_features"))


class PrecisionError(RuntimeError):
    """A precision cannot be written (bad name, missing package); the message is one line."""


@dataclass
class PrecisionResult:
    """One written ONNX file: its precision, tower, size and min cosine to fp32 PyTorch."""
    path: Path
    precision: str
    tower: str
    mb: float
    min_cosine: float


def precision_files(precision: str) -> Tuple[str, str]:
    """File names of the image and text encoders of ``precision`` (fp32 keeps the plain names)."""
    suffix = "" if precision == "fp32" else f".{precision}"
    return tuple(f"{stem}{suffix}.onnx" for stem, _, _ in _TOWERS)


def check_precisions(precisions: Sequence[str]) -> List[str]:
    """Validate ``precisions`` (order kept, duplicates dropped; fp32 always first since the others derive from it)
    and that the packages they need import; raise :class:`PrecisionError` in one line otherwise."""
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise PrecisionError(f"--onnx-precision: unknown {', '.join(map(repr, bad))}; choose from "
                             f"{' '.join(PRECISIONS)}")
    out = ["fp32"] + [p for p in dict.fromkeys(precisions) if p != "fp32"]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise PrecisionError("--onnx-precision needs onnx and onnxruntime: "
                             "pip install onnx onnxruntime (or: pip install -e '.[onnx]' in a checkout)") from None
    if "fp16" in out:
        _float16_converter()
    if "int8" in out:
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError:
            raise PrecisionError("--onnx-precision int8 needs onnxruntime.quantization: "
                                 "pip install onnxruntime") from None
    return out


def _float16_converter():
    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxruntime.transformers.float16 import convert_float_to_float16
        except ImportError:
            raise PrecisionError("--onnx-precision fp16 needs onnxconverter-common: "
                                 "pip install onnxconverter-common") from None
    return convert_float_to_float16


# ops left in fp32: the converter's default list, plus Transpose: with the attention's Transposes in fp16,
# onnxruntime 1.32's CPU graph optimiser crashes (segfault) on the text tower's converted graph
_FP16_BLOCK = ("Transpose",)


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx

    convert = _float16_converter()
    try:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST as block
    except ImportError:
        from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST as block
    model = convert(onnx.load(str(src)), keep_io_types=True, op_block_list=list(block) + list(_FP16_BLOCK))
    onnx.save(model, str(dst))


class _Quiet:
    """Root logger at ERROR for a block: the quantiser warns about pre-processing on every call."""

    def __enter__(self):
        import logging

        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc):
        import logging

        logging.getLogger().setLevel(self.level)


def _to_int8(src: Path, dst: Path) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _Quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)
    return "int8 dynamic (onnxruntime quantize_dynamic: uint8 weights, activations quantised per batch at run time)"


def check_calibration_data(pattern: str) -> List[str]:
    """The shard files of brace ``pattern``, each an existing tar file; :class:`PrecisionError` in one line else."""
    import tarfile

    import braceexpand

    urls = list(braceexpand.braceexpand(pattern))
    for url in urls:
        if not Path(url).is_file():
            raise PrecisionError(f"--calibration-data: {url} is not a file; give webdataset shards written by "
                                 f"`open-clip-lightclip build-shards`, e.g. {CALIBRATION_EXAMPLE}")
        if not tarfile.is_tarfile(url):
            raise PrecisionError(f"--calibration-data: {url} is not a tar file; give webdataset shards written by "
                                 f"`open-clip-lightclip build-shards`, e.g. {CALIBRATION_EXAMPLE}")
    return urls


def calibration_images(pattern: str, num: int, transform) -> np.ndarray:
    """The first ``num`` images of the webdataset shards of brace ``pattern``, through ``transform`` (the model's eval
    preprocessing), as one float32 array; :class:`PrecisionError` in one line for a missing or unreadable shard."""
    import tarfile

    from ..data.shards import read_shard_samples

    urls = check_calibration_data(pattern)
    images = []
    try:
        for url in urls:
            for _, image, _, _ in read_shard_samples(url):
                images.append(transform(image).numpy())
                if len(images) >= num:
                    break
            if len(images) >= num:
                break
    except (OSError, tarfile.TarError, ValueError) as e:
        raise PrecisionError(f"--calibration-data: cannot read images from {pattern} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); rebuild the shards") from None
    if not images:
        raise PrecisionError(f"--calibration-data: no captioned images in {pattern}; give webdataset shards with "
                             f"png/jpg + txt members, e.g. {CALIBRATION_EXAMPLE}")
    return np.stack(images).astype(np.float32)


def _calibration_reader(images: np.ndarray, input_name: str = "image", batch_size: int = 8):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Batches of calibration images, fed to the image encoder while the quantiser records activation ranges."""

        def __init__(self):
            self.start = 0

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            if self.start >= len(images):
                return None
            batch = images[self.start:self.start + batch_size]
            self.start += batch_size
            return {input_name: batch}

        def rewind(self) -> None:
            self.start = 0

    return _Reader()


def _to_int8_static(src: Path, dst: Path, images: np.ndarray, source: str = "") -> str:
    """Static QDQ int8: ``quant_pre_process`` (shape inference, graph optimisation), then ``quantize_static`` with
    int8 per-channel weights and symmetric int8 activations whose ranges come from ``images`` (MinMax calibration).

    Measured on a trained LightCLIP-Tiny (docs/export.md): onnxruntime's default uint8 activations (U8S8) saturate
    on x86 CPUs without VNNI (AVX2) and cost 8.6 points of retrieval recall; int8 activations (S8S8) with
    ``reduce_range`` (7-bit weights) cost none."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="lightclip-quant-") as tmp, _Quiet():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(dst), _calibration_reader(images), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=True, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True})
    return (f"int8 static QDQ (onnxruntime quantize_static: int8 per-channel 7-bit weights, symmetric int8 "
            f"activations, MinMax calibration on {len(images)} images{' from ' + source if source else ''})")


def _tag(path: Path, text: str) -> None:
    """Write how the file was made into its ONNX metadata (:data:`METADATA_KEY`)."""
    import onnx

    model = onnx.load(str(path))
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=text)
    onnx.save(model, str(path))


def read_metadata(path: Path) -> str:
    """How an encoder was made (:data:`METADATA_KEY` of its ONNX metadata; '' when not written by this package)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == METADATA_KEY), "")


def write_precisions(out_dir: Path, precisions: Sequence[str], claim=None,
                     calibration: Optional[np.ndarray] = None, calibration_source: str = "",
                     int8_image: Optional[str] = None) -> Dict[Path, str]:
    """Write the fp16 / int8 encoders of ``precisions`` from the fp32 ``*.onnx`` in ``out_dir``; return
    ``{path: how it was made}``. ``claim(path) -> path`` registers each file with the export's output folder before
    it is written. The int8 image tower is static QDQ calibrated on ``calibration`` (preprocessed images) when
    given, else dynamic; ``int8_image`` forces a mode ("static" needs ``calibration``)."""
    mode = int8_image or ("static" if calibration is not None else "dynamic")
    if mode == "static" and calibration is None:
        raise PrecisionError(f"int8 image tower 'static' needs calibration images: add --calibration-data "
                             f"{CALIBRATION_EXAMPLE}, or --int8-image dynamic")
    written = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        for (_, tower, _), src_name, dst_name in zip(_TOWERS, precision_files("fp32"), precision_files(precision)):
            dst = out_dir / dst_name
            if claim is not None:
                dst = claim(dst)
            if precision == "fp16":
                _to_fp16(out_dir / src_name, dst)
                how = "fp16 (float16 conversion, keep_io_types: inputs and outputs fp32)"
            elif tower == "image" and mode == "static":
                how = _to_int8_static(out_dir / src_name, dst, calibration, calibration_source)
            else:
                how = _to_int8(out_dir / src_name, dst)
            _tag(dst, how)
            written[dst] = how
    return written


def eval_transform(image_size, preprocess_cfg: Optional[dict] = None):
    """The eval-time image transform of a model of ``image_size`` with ``preprocess_cfg`` (mean, std, ...)."""
    import open_clip

    cfg = preprocess_cfg or {}
    size = image_size if isinstance(image_size, int) else image_size[0]
    return open_clip.image_transform(size, is_train=False, mean=cfg.get("mean"), std=cfg.get("std"),
                                     interpolation=cfg.get("interpolation"), resize_mode=cfg.get("resize_mode"))


class OnnxCLIP:
    """``encode_image`` / ``encode_text`` of one precision's ONNX encoders in an export folder, run by onnxruntime
    (CPU, ``threads`` intra-op threads): what clip_benchmark's metrics call on a model."""

    def __init__(self, folder, precision: str = "fp32", threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.paths = [Path(folder) / name for name in precision_files(precision)]
        self.image_session, self.text_session = (
            ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in self.paths)

    def eval(self) -> "OnnxCLIP":
        return self

    @staticmethod
    def _run(session, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        (out,) = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
        out = torch.from_numpy(out).float()
        return F.normalize(out, dim=-1) if normalize else out

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._run(self.image_session, images.float(), normalize)

    def encode_text(self, texts: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._run(self.text_session, texts.long(), normalize)


def held_out_batch(model: nn.Module, model_name: str, context_length: int, num: int = 8,
                   seed: int = 12345) -> Tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of captioned synthetic shapes (a seed the training shards never use), preprocessed as
    the model's eval transform does, and tokenized."""
    import open_clip

    from ..data.synthetic import synthetic_samples

    size = getattr(model.visual, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    transform = open_clip.image_transform(size, is_train=False, mean=cfg.get("mean"), std=cfg.get("std"))
    samples = list(synthetic_samples(num, image_size=size, seed=seed))
    images = torch.stack([transform(image) for _, image, _ in samples])
    texts = open_clip.get_tokenizer(model_name, context_length=context_length)([c for _, _, c in samples])
    return images, texts


@torch.no_grad()
def compare_precisions(model: nn.Module, out_dir: Path, precisions: Sequence[str], images: torch.Tensor,
                       texts: torch.Tensor) -> List[PrecisionResult]:
    """Load every encoder of ``precisions`` in onnxruntime (CPU) and compare its unit-norm embeddings with the
    fp32 PyTorch ``model``'s on ``images`` / ``texts``: size in MB and min cosine over the batch."""
    import onnxruntime as ort

    refs = {"image": F.normalize(model.encode_image(images), dim=-1),
            "text": F.normalize(model.encode_text(texts), dim=-1)}
    inputs = {"image": images.numpy(), "text": texts.numpy()}
    results = []
    for precision in precisions:
        for (_, tower, _), name in zip(_TOWERS, precision_files(precision)):
            path = out_dir / name
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            (got,) = session.run(None, {session.get_inputs()[0].name: inputs[tower]})
            got = F.normalize(torch.from_numpy(got).float(), dim=-1)
            cos = float((got * refs[tower]).sum(-1).min())
            results.append(PrecisionResult(path, precision, tower, path.stat().st_size / 1e6, cos))
    return results


def summarize(results: Sequence[PrecisionResult], threshold: float = COSINE_THRESHOLD) -> List[str]:
    """Lines to print: one per file (MB, min cosine), then one per precision below ``threshold``."""
    lines = [f"{r.path.name}: {r.precision} {r.tower} tower, {r.mb:.2f} MB, "
             f"min cosine to fp32 PyTorch {r.min_cosine:.5f}" for r in results]
    worst: Dict[str, float] = {}
    for r in results:
        worst[r.precision] = min(worst.get(r.precision, 1.0), r.min_cosine)
    for precision, cos in worst.items():
        if cos < threshold:
            lines.append(f"precision {precision} loses more than {1 - threshold:.2g} cosine: min cosine {cos:.5f} "
                         f"< {threshold} (unit-norm embeddings vs fp32 PyTorch)")
    return lines

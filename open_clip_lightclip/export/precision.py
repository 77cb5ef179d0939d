"""fp16 and int8 copies of the exported ONNX encoders, with their quality cost measured against fp32 PyTorch.

* fp16: ``onnxconverter_common.float16.convert_float_to_float16`` (else ``onnxruntime.transformers.float16``),
  ``keep_io_types=True``: inputs and outputs stay fp32, so callers feed the same arrays.
* int8: ``onnxruntime.quantization.quantize_dynamic`` for both towers (weights int8, activations quantised
  per batch at run time; no calibration data needed).

Each file is loaded by onnxruntime and its unit-norm embeddings compared with the fp32 PyTorch model's on a
fixed held-out batch (captioned synthetic shapes): the cosine similarity, min over the batch.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PRECISIONS", "COSINE_THRESHOLD", "PrecisionResult", "precision_files", "check_precisions",
           "write_precisions", "compare_precisions", "held_out_batch", "summarize", "PrecisionError"]

PRECISIONS = ("fp32", "fp16", "int8")
COSINE_THRESHOLD = 0.99  # min cosine to fp32 below which a precision is reported as losing too much
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
                             "pip install 'open-clip-lightclip[onnx]'") from None
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


def _to_int8(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser warns about pre-processing on every call
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)
    finally:
        logging.getLogger().setLevel(level)


def write_precisions(out_dir: Path, precisions: Sequence[str], claim=None) -> List[Path]:
    """Write the fp16 / int8 encoders of ``precisions`` from the fp32 ``*.onnx`` in ``out_dir``; return their paths.
    ``claim(path) -> path`` registers each file with the export's output folder before it is written."""
    written = []
    for precision in precisions:
        if precision == "fp32":
            continue
        convert = _to_fp16 if precision == "fp16" else _to_int8
        for src_name, dst_name in zip(precision_files("fp32"), precision_files(precision)):
            dst = out_dir / dst_name
            if claim is not None:
                dst = claim(dst)
            convert(out_dir / src_name, dst)
            written.append(dst)
    return written


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

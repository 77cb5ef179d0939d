"""Export: trainer checkpoint -> inference model folder (``local-dir:`` / hf-hub layout) and ONNX encoders.

May import ``models/`` and ``data/``; never the seam, ``studies/``, ``benchmarks/`` or ``commands/``.
"""
from .inference import (CONFIG_NAME, IMAGE_ONNX, TEXT_ONNX, WEIGHTS_NAME, ExportError, ExportReport,
                        export_checkpoint, export_model, export_onnx, main_error, write_stock)
from .precision import COSINE_THRESHOLD, PRECISIONS, PrecisionResult, precision_files

__all__ = ["CONFIG_NAME", "IMAGE_ONNX", "TEXT_ONNX", "WEIGHTS_NAME", "ExportError", "ExportReport",
           "export_checkpoint", "export_model", "export_onnx", "main_error", "write_stock",
           "COSINE_THRESHOLD", "PRECISIONS", "PrecisionResult", "precision_files"]

"""Command lines of the real trainer (``python -m open_clip_train.main``), for the demo and tests."""
import sys
from typing import List, Optional

__all__ = ["trainer_command"]


def trainer_command(
        train_data: str,
        logs: str,
        name: str,
        model: str = "LightCLIP-Tiny",
        loss: Optional[str] = "clip",
        batch_size: int = 32,
        epochs: int = 1,
        lr: float = 1e-3,
        warmup: int = 10,
        seed: int = 0,
        extra: Optional[List[str]] = None,
) -> List[str]:
    """The ``python -m open_clip_train.main`` command line of a single-process CPU run."""
    cmd = [
        sys.executable, "-m", "open_clip_train.main",
        "--model", model,
        "--train-data", train_data,
        "--dataset-type", "webdataset",
        "--device", "cpu",
        "--precision", "fp32",
        "--batch-size", str(batch_size),
        "--epochs", str(epochs),
        "--lr", str(lr),
        "--warmup", str(warmup),
        "--workers", "1",
        "--seed", str(seed),
        "--logs", logs,
        "--name", name,
        "--log-every-n-steps", "1",
    ]
    if loss is not None:
        cmd += ["--loss", loss]
    return cmd + list(extra or [])

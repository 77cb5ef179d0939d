"""Command lines of the real trainer (``python -m open_clip_train.main``): built for studies and tests, checked."""
import contextlib
import io
import sys
from typing import List, Optional, Sequence

__all__ = ["trainer_command", "trainer_parse_error"]


def trainer_parse_error(argv: Sequence[str]) -> Optional[str]:
    """The trainer parser's one-line error for ``argv`` (plugin flags and their checks included), or None.

    Parses in this process without side effects: the parsed args are not left pending for the
    next model this process builds."""
    from open_clip_train.params import parse_args

    from . import hooks

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse_args(list(argv))
    except SystemExit as e:
        if e.code in (0, None):
            return None
        lines = [line for line in err.getvalue().strip().splitlines() if line.strip()]
        return lines[-1].split("error: ", 1)[-1] if lines else f"exit {e.code}"
    finally:
        hooks._PENDING_TRAINER_ARGS = None
    return None


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

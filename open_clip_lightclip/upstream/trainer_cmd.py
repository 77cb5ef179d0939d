"""Command lines of the real trainer (``python -m open_clip_train.main``): built for studies and tests, checked."""
import contextlib
import io
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["trainer_command", "trainer_parse_error", "trainer_settings", "RUN_IDENTITY"]


def _parse(argv: Sequence[str]):
    """``(args, None)`` or ``(None, one-line error)``: the trainer's parser in this process, without side effects
    (the parsed args are not left pending for the next model this process builds)."""
    from open_clip_train.params import parse_args

    from . import hooks

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse_args(list(argv)), None
    except SystemExit as e:
        if e.code in (0, None):
            return None, None
        lines = [line for line in err.getvalue().strip().splitlines() if line.strip()]
        return None, (lines[-1].split("error: ", 1)[-1] if lines else f"exit {e.code}")
    finally:
        hooks._PENDING_TRAINER_ARGS = None


def trainer_parse_error(argv: Sequence[str]) -> Optional[str]:
    """The trainer parser's one-line error for ``argv`` (plugin flags and their checks included), or None."""
    return _parse(argv)[1]


# what names a run rather than what it trains
RUN_IDENTITY = ("name", "logs")


def trainer_settings(argv: Sequence[str]) -> Dict[str, Any]:
    """Every setting the trainer resolves from ``argv`` (its flags and the defaults of upstream and the plugin),
    as JSON values, without the run's name and log folder: two command lines train the same run exactly when
    their settings are equal, however the flags are spelled, and a changed default changes them. The flags that
    change nothing for this run (:func:`~open_clip_lightclip.losses.idle_args`: the plugin's other objectives',
    those of the run's own terms that are off, distillation's without a teacher) are left out."""
    args, error = _parse(argv)
    if args is None:
        raise ValueError(error or f"no trainer settings for {' '.join(argv)}")
    from ..losses import idle_args

    idle = idle_args(args)
    settings = {k: v for k, v in vars(args).items() if k not in RUN_IDENTITY and k not in idle}
    return json.loads(json.dumps(settings, sort_keys=True, default=repr))


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

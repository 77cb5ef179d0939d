"""One-line errors for the trainer process: what an uncaught exception of a known kind prints.

Upstream's trainer lets every exception out as a traceback. For input errors a user can fix
(an unreadable ``--resume`` file, a checkpoint that does not fit the run's model) the seam
installs a ``sys.excepthook`` that prints one line naming the problem and the fix instead: only for
the plugin's own anticipated errors (``CheckpointError``, ``TeacherError``, ``DataError``, ``ReinforceError``, raised for a
known cause) and the resume load's state_dict mismatch; any other exception keeps its traceback.
``OPEN_CLIP_LIGHTCLIP_TRACEBACK=1`` shows the full traceback as before.
"""
import os
import re
import sys
from typing import Callable, Optional

__all__ = ["one_line", "install_excepthook"]


def _state_dict_mismatch(text: str) -> str:
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*?)\.\s*$"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)\.\s*$")):
        m = re.search(pattern, text, re.MULTILINE)
        if m:
            keys = re.findall(r'"([^"]+)"', m.group(1))
            parts.append(f"{len(keys)} {label} keys (e.g. {keys[0]!r})" if keys else f"{label} keys")
    shapes = re.findall(r"size mismatch for ([^:]+): copying a param with shape torch.Size\(\[([^\]]*)\]\) from "
                        r"checkpoint, the shape in current model is torch.Size\(\[([^\]]*)\]\)", text)
    if shapes:
        key, file_shape, model_shape = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {key!r}: [{file_shape}] in the file, [{model_shape}] in the model)")
    return "; ".join(parts) or "the keys differ"


def _raised_by_the_resume_load(exc: BaseException) -> bool:
    """True when ``exc`` left the trainer's ``main()`` at its ``model.load_state_dict(sd)`` of ``--resume`` (a
    state_dict mismatch anywhere else, e.g. in the plugin's own code, is a bug and keeps its traceback)."""
    import linecache
    import traceback

    lines = [linecache.getline(frame.f_code.co_filename, lineno) for frame, lineno in traceback.walk_tb(exc.__traceback__)
             if frame.f_code.co_filename.replace(os.sep, "/").endswith("open_clip_train/main.py")]
    return bool(lines) and "model.load_state_dict(" in lines[-1]


def one_line(exc: BaseException, resume: Optional[str] = None) -> Optional[str]:
    """The one-line message for ``exc``, or None for an exception that keeps its traceback."""
    from ..models.checkpoint import CheckpointError

    from ..models.teachers import TeacherError

    if isinstance(exc, (CheckpointError, TeacherError)):
        return str(exc)
    from ..data.reinforced import ReinforceError
    from .shard_check import DataError

    if isinstance(exc, (DataError, ReinforceError)):  # raised in a DataLoader worker, it arrives with its traceback
        return str(exc).strip().splitlines()[-1].split(f"{type(exc).__name__}: ", 1)[-1]
    if resume and isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc) \
            and _raised_by_the_resume_load(exc):
        return (f"--resume {resume}: the checkpoint does not fit this run's model ({_state_dict_mismatch(str(exc))}); "
                f"resume with the --model and flags the run was started with, or start a new run from its "
                f"weights with --pretrained {resume}")
    return None


def install_excepthook(resume: Callable[[], Optional[str]]) -> None:
    """Print known input errors as one line (``error: ...``); ``resume()`` gives the run's ``--resume``."""
    if getattr(sys.excepthook, "lightclip_one_line", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        line = None if os.environ.get("OPEN_CLIP_LIGHTCLIP_TRACEBACK") else one_line(exc, resume())
        if line is None:
            return previous(exc_type, exc, tb)
        print(f"error: {line} (OPEN_CLIP_LIGHTCLIP_TRACEBACK=1 shows the traceback)", file=sys.stderr, flush=True)

    hook.lightclip_one_line = True
    sys.excepthook = hook

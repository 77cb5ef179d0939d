"""Progress lines of a long benchmark: one per finished piece, with the time so far and an ETA (stderr)."""
import sys
import time
from typing import Callable, Optional, TextIO

__all__ = ["Progress", "Report", "format_seconds"]

Report = Callable[[str, Optional[float]], None]  # (what finished, seconds left or None): a Progress, or a wrapper


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m07s``, ``1h05m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Prints ``[NAME] WHAT; elapsed 1m02s, ETA 3m10s`` on ``stream`` (default: stderr, so that the markdown table
    on stdout can be redirected on its own). The caller estimates the time left: it knows what each piece costs."""

    def __init__(self, name: str, stream: Optional[TextIO] = None, clock: Callable[[], float] = time.perf_counter):
        self.name, self.stream, self.clock = name, stream, clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def __call__(self, what: str, remaining_s: Optional[float] = None) -> None:
        eta = "ETA unknown yet" if remaining_s is None else f"ETA {format_seconds(remaining_s)}"
        print(f"[{self.name}] {what}; elapsed {format_seconds(self.elapsed())}, {eta}",
              file=self.stream or sys.stderr, flush=True)

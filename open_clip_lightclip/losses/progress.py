"""Global training progress ``t`` in [0, 1], as the trainer's LR scheduler sees it.

The seam wraps ``open_clip_train.scheduler``'s factories so every rank records the run's total
optimizer steps and, on each call, the current step. That step is the trainer's own
(``epoch * steps_per_epoch + batch // accum_freq``), so it is right after ``--resume`` and
under ``--accum-freq``. Objectives read ``PROGRESS.fraction`` (or ``step`` / ``total_steps``).
In an OpenCLIP that keeps its own progress (``patches/``), ``PROGRESS.follow(upstream)`` makes
this object read that one.
"""
from typing import Optional

__all__ = ["TrainingProgress", "PROGRESS"]


class TrainingProgress:
    """The trainer's optimizer step and total steps; ``fraction`` = step / total, clamped to [0, 1]."""

    def __init__(self, step: int = 0, total_steps: Optional[int] = None):
        self._step, self._total_steps = step, total_steps
        self._source = None

    def follow(self, source) -> None:
        """Read (and write) ``step`` / ``total_steps`` on ``source`` from now on (None: own values again)."""
        self._source = source

    @property
    def step(self) -> int:
        return self._source.step if self._source is not None else self._step

    @step.setter
    def step(self, value: int) -> None:
        if self._source is not None:
            self._source.step = value
        else:
            self._step = value

    @property
    def total_steps(self) -> Optional[int]:
        return self._source.total_steps if self._source is not None else self._total_steps

    @total_steps.setter
    def total_steps(self, value: Optional[int]) -> None:
        if self._source is not None:
            self._source.total_steps = value
        else:
            self._total_steps = value

    @property
    def fraction(self) -> float:
        if not self.total_steps:
            return 0.0
        return min(max(self.step / self.total_steps, 0.0), 1.0)

    def wrap_scheduler_factory(self, factory):
        """``factory(optimizer, base_lr, warmup, steps, ...) -> adjuster(step)``, recording both."""

        def make(optimizer, base_lr, warmup_length, steps, *args, **kwargs):
            self.total_steps, self.step = steps, 0
            adjuster = factory(optimizer, base_lr, warmup_length, steps, *args, **kwargs)

            def adjust(step):
                self.step = step
                return adjuster(step)

            return adjust

        make.__name__ = factory.__name__
        make.__wrapped__ = factory
        return make


PROGRESS = TrainingProgress()

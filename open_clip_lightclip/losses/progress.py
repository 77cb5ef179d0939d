"""Global training progress ``t`` in [0, 1], as the trainer's LR scheduler sees it.

The integration wraps ``open_clip_train.scheduler``'s factories so every rank records the
run's total optimizer steps and, on each call, the current step. That step is the
trainer's own (``epoch * steps_per_epoch + batch // accum_freq``), so it is right after
``--resume`` and under ``--accum-freq``. Objectives read ``PROGRESS.fraction``.
"""
from dataclasses import dataclass
from typing import Optional

__all__ = ["TrainingProgress", "PROGRESS"]


@dataclass
class TrainingProgress:
    step: int = 0
    total_steps: Optional[int] = None

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

"""Paired comparison of arms over seeds: mean ± sd, paired difference to a baseline with a t interval.

Arms trained with the same seed share their initial weights and data order, so the per-seed
difference ``arm - baseline`` removes most of the seed-to-seed noise; its mean gets a
two-sided 95% Student-t confidence interval over the seeds.
"""
import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

__all__ = ["T_975", "t_quantile_975", "mean_sd", "PairedDiff", "paired_difference"]

# two-sided 95% Student-t critical values t_{0.975, df} for df = 1..30
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` with ``df`` degrees of freedom (table to 30, then the normal 1.960 limit approached)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 paired seeds (df >= 1), got df={df}")
    if df <= len(T_975):
        return T_975[df - 1]
    return 1.960 + 2.4 / df  # within 0.002 of the exact value for df > 30


def mean_sd(values: Sequence[float]):
    """(mean, sample standard deviation); sd is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class PairedDiff:
    n: int  # seeds present for both arms
    mean: float
    sd: Optional[float]
    low: Optional[float]  # 95% CI; None with one seed
    high: Optional[float]
    wins: int  # seeds where the arm beat the baseline

    @property
    def verdict(self) -> str:
        if self.low is None:
            return "one seed: no interval"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no difference beyond the CI"


def paired_difference(arm: Dict[int, float], baseline: Dict[int, float]) -> Optional[PairedDiff]:
    """``arm`` and ``baseline`` map seed -> metric; the difference is taken on the seeds both have."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        return None
    diffs: List[float] = [arm[s] - baseline[s] for s in seeds]
    mean, sd = mean_sd(diffs)
    wins = sum(d > 0 for d in diffs)
    if len(diffs) < 2:
        return PairedDiff(len(diffs), mean, None, None, None, wins)
    half = t_quantile_975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return PairedDiff(len(diffs), mean, sd, mean - half, mean + half, wins)

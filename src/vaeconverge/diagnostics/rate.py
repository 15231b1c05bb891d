"""The empirical rate: slope of log(running-min squared gradient norm) against log n (THEORY.md section 5)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

# Slopes around -1/2 (up to the log factor) are the noise-dominated regime the theorems describe; steeper
# slopes mean the optimisation transient still dominates; flat ones, a noise floor (constant steps).
TRANSIENT_BELOW = -0.75
STALLED_ABOVE = -0.25


@dataclass(frozen=True)
class RateFit:
    """Least-squares slope of log min_{k<=n} ||grad||^2 on log n over the second half of a run."""

    slope: float
    stderr: float
    first_step: int
    last_step: int
    points: int

    @property
    def regime(self) -> str:
        if self.slope < TRANSIENT_BELOW:
            return "transient (faster than n^-1/2: optimisation, not noise, dominates)"
        if self.slope > STALLED_ABOVE:
            return "floor (slower than n^-1/4: a noise floor or no progress)"
        return "noise-dominated (about n^-1/2, the theorems' regime)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "regime": self.regime}


def fit_rate(steps: Sequence[int], values: Sequence[float]) -> RateFit | None:
    """Slope over the checkpoints with step >= n/2 (step 0 excluded); None with fewer than 3 usable points."""
    steps = np.asarray(steps, dtype=np.float64)
    running_min = np.minimum.accumulate(np.asarray(values, dtype=np.float64))
    keep = (steps >= steps[-1] / 2) & (steps > 0) & (running_min > 0) & np.isfinite(running_min)
    if keep.sum() < 3:
        return None
    x, y = np.log(steps[keep]), np.log(running_min[keep])
    fit = stats.linregress(x, y)
    return RateFit(slope=float(fit.slope), stderr=float(fit.stderr), first_step=int(steps[keep][0]),
                   last_step=int(steps[keep][-1]), points=int(keep.sum()))


def slope_interval(slopes: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean slope over seeds and its Student-t confidence interval (NaN bounds with a single seed)."""
    slopes = np.asarray(slopes, dtype=np.float64)
    mean = float(slopes.mean())
    if len(slopes) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(slopes) - 1) * slopes.std(ddof=1) / math.sqrt(len(slopes)))
    return mean, mean - half, mean + half


def tail_mean(steps: Sequence[int], values: Sequence[float], tail: float = 0.25) -> float:
    """Mean of ``values`` over the checkpoints in the last ``tail`` fraction of the run (NaNs ignored): the
    level a run has settled at, such as the noise floor of the squared gradient norm."""
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values[steps >= (1 - tail) * steps[-1]]))

"""The empirical rate and what it says: the slope of log E||grad L||^2 against log n, with an interval from the
seeds, and the regime a run is in, each with its evidence (docs/theory.md section 5).

The rate is fitted to the seed-mean curve (the estimate of the expectation the theorems bound) over the second
half of the run, not to a running minimum: a running minimum is an extreme-value statistic, flat wherever the
curve dipped early. Its interval comes from the seeds by the jackknife (leave one seed out, refit), so it holds
the seed-to-seed spread of whole trajectories, which a regression's standard error on one curve does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .posterior import COLLAPSED_KL

# Slopes around -1/2 (up to the log factor) are the noise-dominated regime the theorems describe; steeper
# slopes mean the optimisation transient still dominates; flat ones, a noise floor (constant steps).
TRANSIENT_BELOW = -0.75
STALLED_ABOVE = -0.25
# The two-sided level of the intervals over seeds (rates, trends of findings).
INTERVAL_LEVEL = 0.90
# Fewer seeds than this give an interval too unreliable to name a regime by.
MIN_SEEDS = 4


@dataclass(frozen=True)
class RateFit:
    """Least-squares slope of log(seed-mean ||grad L||^2) on log n over the checkpoints from n/2 on (those where
    the mean is positive: an unbiased estimate can fall below zero where the gradient is lost in its noise), and
    its jackknife interval over seeds at ``level`` (NaN with one seed)."""

    slope: float
    ci: tuple[float, float]
    level: float
    seeds: int
    first_step: int
    last_step: int
    points: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci": list(self.ci)}


def fit_rate(steps: Sequence[int], curves: Sequence[Sequence[float]] | np.ndarray,
             level: float = INTERVAL_LEVEL) -> RateFit | None:
    """The rate of ``curves`` (seeds x checkpoints, measured at ``steps``); None with fewer than 3 usable points."""
    steps = np.asarray(steps, dtype=np.float64)
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    window = (steps >= steps[-1] / 2) & (steps > 0)
    fitted = _slope(steps, curves.mean(0), window)
    if fitted is None:
        return None
    slope, points = fitted
    seeds = len(curves)
    low = high = math.nan
    if seeds > 1:
        leave_one_out = [_slope(steps, np.delete(curves, i, axis=0).mean(0), window) for i in range(seeds)]
        if all(fit is not None for fit in leave_one_out):
            slopes = np.array([fit[0] for fit in leave_one_out])
            se = math.sqrt((seeds - 1) / seeds * np.square(slopes - slopes.mean()).sum())
            half = float(stats.t.ppf(0.5 + level / 2, seeds - 1)) * se
            low, high = slope - half, slope + half
    kept = steps[window & (curves.mean(0) > 0)]
    return RateFit(slope=slope, ci=(low, high), level=level, seeds=seeds, first_step=int(kept[0]),
                   last_step=int(kept[-1]), points=points)


def _slope(steps: np.ndarray, values: np.ndarray, window: np.ndarray) -> tuple[float, int] | None:
    """Slope of log ``values`` on log ``steps`` over ``window`` where the values are positive, and the points used."""
    keep = window & (values > 0) & np.isfinite(values)
    if keep.sum() < 3:
        return None
    return float(stats.linregress(np.log(steps[keep]), np.log(values[keep])).slope), int(keep.sum())


def mean_interval(values: Sequence[float], level: float = INTERVAL_LEVEL) -> tuple[float, float, float]:
    """Mean of independent per-seed ``values`` and its Student-t interval (NaN bounds with a single seed)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Regime:
    """What a run is doing, named with the reason, and the evidence behind it."""

    name: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.reason})"


def classify(steps: Sequence[int], grads: np.ndarray, objective: np.ndarray, rate: RateFit | None,
             kl: float = math.nan, active_units: float = math.nan) -> Regime:
    """The regime of a run from its per-seed curves (seeds x checkpoints) of ||grad L||^2 and the objective, its
    rate, and the seed-mean KL and active units at the last checkpoint (NaN where the model has no encoder).

    In order: undetermined with fewer than :data:`MIN_SEEDS` seeds (the interval cannot be trusted); collapsed
    (KL below :data:`~.posterior.COLLAPSED_KL`: a stationary point of no interest); undetermined without a rate;
    leaving a flat start (over the second half, the gradient's slope is resolved positive while the objective
    falls: the run leaves the near-zero gradient of its start); transient (slope resolved below
    :data:`TRANSIENT_BELOW`); floor (resolved above :data:`STALLED_ABOVE`); noise-dominated (resolved within
    [-1, 0], the theorems' regime); otherwise inconclusive.
    """
    steps = np.asarray(steps, dtype=np.float64)
    seeds = len(grads)
    window = (steps >= steps[-1] / 2) & (steps > 0)
    change = objective[:, window][:, -1] - objective[:, window][:, 0] if window.sum() >= 2 else np.array([math.nan])
    falling = mean_interval(change)
    evidence: dict[str, Any] = {
        "seeds": seeds, "kl": kl, "active_units": active_units,
        "collapsed": bool(kl < COLLAPSED_KL), "objective_change": list(falling),
    }
    if seeds < MIN_SEEDS:
        return Regime("undetermined", f"{seeds} seeds", evidence)
    if kl < COLLAPSED_KL:
        return Regime("collapsed", f"mean KL {kl:.3g} nats per example, {active_units:.0f} active units: the encoder "
                      "ignores x", evidence)
    if rate is None or not all(map(math.isfinite, rate.ci)):
        return Regime("undetermined", "too few checkpoints with a positive seed mean to fit a rate", evidence)
    low, high = rate.ci
    interval = f"slope {rate.slope:.2f}, {rate.level:.0%} interval [{low:.2f}, {high:.2f}]"
    if low > 0 and falling[2] < 0:
        return Regime("leaving a flat start", f"the objective falls while ||grad L||^2 rises; {interval}", evidence)
    if high < TRANSIENT_BELOW:
        return Regime("transient", f"faster than n^-3/4, optimisation dominates; {interval}", evidence)
    if low > STALLED_ABOVE:
        return Regime("floor", f"slower than n^-1/4, a noise floor or no progress; {interval}", evidence)
    if low >= -1 and high <= 0:
        return Regime("noise-dominated", f"about n^-1/2, the theorems' regime; {interval}", evidence)
    return Regime("inconclusive", f"the interval spans regimes; {interval}", evidence)


def tail_mean(steps: Sequence[int], values: Sequence[float], tail: float = 0.25) -> float:
    """Mean of ``values`` over the checkpoints in the last ``tail`` fraction of the run (NaNs ignored): the
    level a run has settled at, such as the noise floor of the squared gradient norm."""
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values[steps >= (1 - tail) * steps[-1]]))

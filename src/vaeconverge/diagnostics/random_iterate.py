"""The random iterate of the theorems, read off full-gradient norms measured at checkpoints.

The bounds speak of E ||grad L(theta_R)||^2 with R drawn over the iterates 0..n, P(R = t) proportional to the
step size gamma_{t+1} applied at theta_t (or uniform). A run measures the norm only at checkpoints, so each
checkpoint stands for the iterates nearest to it, weighted by their step sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def checkpoint_weights(steps: Sequence[int], step_sizes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Weight of each checkpoint: the sum of ``step_sizes[t]`` (the step applied at iterate t) over the
    iterates t in 0..n whose nearest checkpoint it is; ``steps`` sorted, ``len(step_sizes) == n + 1``."""
    steps = np.asarray(steps, dtype=np.int64)
    gammas = np.asarray(step_sizes, dtype=np.float64)
    if len(steps) == 0 or np.any(np.diff(steps) <= 0):
        raise ValueError("checkpoint steps must be non-empty and strictly increasing")
    if steps[0] < 0 or steps[-1] >= len(gammas):
        raise ValueError(f"need a step size for every iterate 0..{steps[-1]}, got {len(gammas)}")
    cumulative = np.concatenate([[0.0], np.cumsum(gammas[: steps[-1] + 1])])
    # cell j covers iterates [lo_j, hi_j): from the midpoint with the previous checkpoint to the next midpoint
    mids = (steps[:-1] + steps[1:]) // 2 + 1
    lo = np.concatenate([[0], mids])
    hi = np.concatenate([mids, [steps[-1] + 1]])
    return cumulative[hi] - cumulative[lo]


@dataclass(frozen=True)
class RandomIterate:
    """Summaries of the checkpointed squared gradient norms that the theorems bound."""

    step_weighted_mean: float  # E ||grad||^2 at R with P(R = t) ~ gamma_{t+1}
    uniform_mean: float  # the same with R uniform on 0..n
    draw_step: int  # one R drawn with P ~ gamma, rounded to its checkpoint
    draw_value: float
    uniform_draw_step: int
    uniform_draw_value: float
    running_min: float  # min over checkpoints: the least of noisy estimates, biased low (drawn, not a rate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_iterate(
    steps: Sequence[int], values: Sequence[float], step_sizes: Sequence[float] | np.ndarray, seed: int = 0
) -> RandomIterate:
    """Step-size-weighted and uniform random-iterate statistics of ``values`` measured at ``steps``."""
    values = np.asarray(values, dtype=np.float64)
    weighted = checkpoint_weights(steps, step_sizes)
    uniform = checkpoint_weights(steps, np.ones(len(step_sizes)))
    rng = np.random.default_rng(seed)
    draw = rng.choice(len(steps), p=weighted / weighted.sum())
    uniform_draw = rng.choice(len(steps), p=uniform / uniform.sum())
    return RandomIterate(
        step_weighted_mean=float(weighted @ values / weighted.sum()),
        uniform_mean=float(uniform @ values / uniform.sum()),
        draw_step=int(steps[draw]),
        draw_value=float(values[draw]),
        uniform_draw_step=int(steps[uniform_draw]),
        uniform_draw_value=float(values[uniform_draw]),
        running_min=float(values.min()),
    )


def weighted_mean_curve(steps: Sequence[int], values: Sequence[float], step_sizes: Sequence[float] | np.ndarray
                        ) -> np.ndarray:
    """For each checkpoint n, the step-weighted random-iterate mean over the run up to n (what a bound after n
    steps is compared with), in one pass: within the prefix ending at checkpoint j, every earlier checkpoint
    keeps its cell of :func:`checkpoint_weights`, and checkpoint j's cell runs to iterate steps[j]."""
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(step_sizes, dtype=np.float64)[: steps[-1] + 1])])
    mids = (steps[:-1] + steps[1:]) // 2 + 1
    lo = np.concatenate([[0], mids])
    inner = cumulative[mids] - cumulative[lo[:-1]]  # weight of checkpoint i once checkpoint i + 1 exists
    weighted_before = np.concatenate([[0.0], np.cumsum(inner * values[:-1])])
    weight_before = np.concatenate([[0.0], np.cumsum(inner)])
    last = cumulative[steps + 1] - cumulative[lo]  # weight of checkpoint j as the last one
    return (weighted_before + last * values) / (weight_before + last)

"""A finished run held against the theory: its random iterate, fitted rate, and the bound for its optimizer.

Everything here is computed from the run's stored configuration, metrics and estimated constants, so
``vaeconverge train`` and ``vaeconverge bound --from`` give the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..config import RunConfig
from ..diagnostics.random_iterate import random_iterate, weighted_mean_curve
from ..diagnostics.rate import fit_rate, noise_floor
from ..optim import schedule_factor
from .bounds import (
    adagrad_bound,
    adam_bound,
    best_allocation,
    ghadimi_lan_curve,
    noise_variance,
    predict_noise_ratio,
)

# Torch's defaults for the optimizers' eps (not exposed as options): the Adam/Adagrad bounds need them.
ADAM_EPS = 1e-8
ADAGRAD_EPS = 1e-10
RMSPROP_ALPHA = 0.99
CANDIDATE_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CANDIDATE_SAMPLES = (1, 2, 5, 10, 20, 50, 100)


@dataclass(frozen=True)
class Constants:
    """The constants the bounds need, estimated on the run (see ``diagnostics/constants.py``)."""

    L: float  # smoothness: largest |Hessian eigenvalue| seen along the trajectory
    sigma2_x: float  # between-example gradient variance
    sigma2_eps: float  # Monte Carlo gradient variance of one sample, so sigma^2(B, K) = sx/B + se/(BK)
    R: float  # high quantile of the minibatch gradients' largest coordinate
    delta: float  # objective at initialisation minus the best value known
    d: int  # number of trained parameters
    batch_size: int
    samples: int
    delta_reference: str  # what "best value known" was

    @property
    def sigma2(self) -> float:
        """Gradient noise variance at the run's own (B, K)."""
        return noise_variance(self.sigma2_x, self.sigma2_eps, self.batch_size, self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sigma2": self.sigma2}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Constants:
        return cls(**{k: v for k, v in values.items() if k != "sigma2"})


def step_sizes(config: RunConfig, steps: int, batches_per_epoch: int) -> np.ndarray:
    """gamma_{t+1}, the step size applied at iterate t, for t = 0..steps."""
    factor = schedule_factor(config.schedule, config.schedule_power, batches_per_epoch)
    return config.lr * np.array([factor(t) for t in range(steps + 1)])


def bound_curve(config: RunConfig, constants: Constants, gammas: np.ndarray, steps: Sequence[int]
                ) -> tuple[str, np.ndarray | None, str]:
    """(name of the bound, its value after each checkpoint's number of steps or None, why None / reference)."""
    steps = np.asarray(steps)
    c = constants
    if config.optimizer == "sgd":
        if config.momentum:
            return "ghadimi-lan", None, "Ghadimi-Lan covers plain SGD; this run uses momentum"
        if gammas[:-1].max() >= 2 / c.L:
            return "ghadimi-lan", None, f"a step size reaches 2/L = {2 / c.L:.3g}: the bound needs gamma < 2/L"
        curve = ghadimi_lan_curve(gammas[:-1], c.L, c.sigma2, c.delta)
        values = np.array([curve[s - 1] if s > 0 else math.inf for s in steps])
        return "ghadimi-lan", values, "Ghadimi & Lan, SIAM J. Optim. 2013, Thm 2.1 (randomized SGD)"
    if config.schedule != "constant":
        return "defossez", None, "the Adam/Adagrad bounds are stated for a constant base step size"
    if config.optimizer in ("adam", "amsgrad", "rmsprop"):
        beta1, beta2 = (0.0, RMSPROP_ALPHA) if config.optimizer == "rmsprop" else config.adam_betas
        if config.optimizer == "rmsprop" and config.momentum:
            return "defossez", None, "RMSprop with momentum is not the Adam recursion the bound covers"
        min_steps = beta1 / (1 - beta1)
        values = np.array([adam_bound(config.lr, beta1, beta2, ADAM_EPS, c.R, c.L, c.delta, c.d, int(s))
                           if s > min_steps else math.inf for s in steps])
        return "defossez-adam", values, "Defossez, Bottou, Bach, Usunier, TMLR 2022, Thm 2 (Adam)"
    values = np.array([adagrad_bound(config.lr, ADAGRAD_EPS, c.R, c.L, c.delta, c.d, int(s)) if s > 0 else math.inf
                       for s in steps])
    return "defossez-adagrad", values, "Defossez, Bottou, Bach, Usunier, TMLR 2022, Thm 1 (Adagrad)"


def assess(config: RunConfig, metrics: Sequence[dict[str, float]], constants: Constants | None,
           batches_per_epoch: int) -> dict[str, Any]:
    """``random_iterate``, ``rate_slope``, ``rate`` and ``bound`` entries of a run's summary; fills each
    metrics row's ``bound`` (NaN where no bound applies)."""
    steps = [int(row["step"]) for row in metrics]
    values = [row["grad_sq_norm"] for row in metrics]
    gammas = step_sizes(config, steps[-1], batches_per_epoch)
    rate = fit_rate(steps, values)
    out: dict[str, Any] = {
        "random_iterate": random_iterate(steps, values, gammas, seed=config.seed).to_dict(),
        "rate_slope": None if rate is None else rate.slope,
        "rate": None if rate is None else rate.to_dict(),
    }
    if constants is None:
        out["bound"] = None
        return out
    name, curve, note = bound_curve(config, constants, gammas, steps)
    measured = weighted_mean_curve(steps, values, gammas)
    for row, value in zip(metrics, curve if curve is not None else [math.nan] * len(metrics), strict=True):
        row["bound"] = float(value)
    final = None if curve is None else float(curve[-1])
    bound: dict[str, Any] = {
        "name": name,
        "value": final,
        "note": note,
        "measured_step_weighted_mean": float(measured[-1]),
        "holds": None if final is None else bool(measured[-1] <= final),
    }
    if config.optimizer == "sgd" and constants.L > 0:
        budget = config.batch_size * config.samples * steps[-1]
        best, _ = best_allocation(budget, constants.L, constants.sigma2_x, constants.sigma2_eps, constants.delta,
                                  1.0 / constants.L, CANDIDATE_BATCH_SIZES, CANDIDATE_SAMPLES)
        bound["best_allocation"] = {"budget": budget, **asdict(best)}
    out["bound"] = bound
    return out


def compare_runs(first: dict[str, Any], first_metrics: Sequence[dict[str, float]],
                 second: dict[str, Any], second_metrics: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Predicted change of the noise term from the first run's constants when moving to the second run's
    (B, K), next to the measured change of the gradient-norm noise floor and of the estimated sigma^2."""
    a, b = Constants.from_dict(first["constants"]), Constants.from_dict(second["constants"])
    predicted = predict_noise_ratio(a.sigma2_x, a.sigma2_eps, (a.batch_size, a.samples), (b.batch_size, b.samples))

    def floor(metrics: Sequence[dict[str, float]]) -> float:
        return noise_floor([row["step"] for row in metrics], [row["grad_sq_norm"] for row in metrics])

    return {
        "from": {"batch_size": a.batch_size, "samples": a.samples},
        "to": {"batch_size": b.batch_size, "samples": b.samples},
        "predicted_noise_ratio": predicted,
        "measured_sigma2_ratio": b.sigma2 / a.sigma2,
        "measured_floor_ratio": floor(second_metrics) / floor(first_metrics),
    }

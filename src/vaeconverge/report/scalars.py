"""Which scalars a run exposes to experiment trackers (TensorBoard, MLflow), defined once: its metrics rows as one
series per seed (and their mean), the finite metrics of a row, and a summary's headline readings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..diagnostics.seeds import by_seed, seed_mean
from ..engine.recorder import METRIC_COLUMNS

# Every metrics.csv column but the row's coordinates (seed, step), which a tracker's run and step already give.
SCALARS = tuple(column for column in METRIC_COLUMNS if column not in ("seed", "step"))
READINGS_PREFIX = "summary/"  # final readings' names, apart from the per-checkpoint series of the same quantity


def series(metrics: Sequence[dict[str, float]]) -> dict[str, list[dict[str, float]]]:
    """A run's metrics rows as named series: each seed's checkpoints (``seed-S``) and, for several seeds, their
    mean at the steps every seed reached (``mean``)."""
    named = {f"seed-{seed}": rows for seed, rows in by_seed(metrics).items()}
    if len(named) > 1:
        named["mean"] = seed_mean(metrics)
    return named


def run_curve(metrics: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """The one series that stands for a run: its seed's rows, or the mean of its seeds."""
    named = series(metrics)
    return named.get("mean") or next(iter(named.values()))


def scalars(row: Mapping[str, float]) -> dict[str, float]:
    """The finite values of :data:`SCALARS` in a metrics row (a column a run does not measure is NaN there)."""
    return {key: float(row[key]) for key in SCALARS if math.isfinite(row.get(key, math.nan))}


def final_readings(summary: Mapping[str, Any]) -> dict[str, float]:
    """A summary's headline readings, as ``summary/NAME`` numbers (those it holds as finite values): the last
    checkpoint's objective, ||grad L||^2 with its standard error, proxy and log-likelihood (seed means), the
    random iterate's step-weighted mean, the rate's slope, the bound and whether it holds (1 or 0), the estimated
    constants L, sigma^2 and delta, and a BBVI run's gap to the log evidence."""
    bound = summary.get("bound") or {}
    constants = summary.get("constants") or {}
    values = {
        **{key: summary.get(key) for key in ("objective", "grad_sq_norm", "grad_sq_norm_se", "paper_proxy",
                                              "log_likelihood", "rate_slope", "evidence_gap")},
        "random_iterate": (summary.get("random_iterate") or {}).get("step_weighted_mean"),
        "bound": bound.get("value"),
        "bound_holds": bound.get("holds"),
        **{key: constants.get(key) for key in ("L", "sigma2", "delta")},
    }
    return {READINGS_PREFIX + key: float(value) for key, value in values.items()
            if isinstance(value, int | float) and math.isfinite(value)}

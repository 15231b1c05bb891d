"""Statistics over independent seeds: the expectation the theorems bound, and bands around it.

Metrics rows carry a ``seed`` column; a checkpoint step has one row per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

QUANTILES = (0.1, 0.5, 0.9)
BAND_KEYS = ("grad_sq_norm", "objective", "random_iterate", "log_likelihood")


def by_seed(metrics: Sequence[dict[str, float]]) -> dict[int, list[dict[str, float]]]:
    """The rows of each seed, in step order (rows without a seed column belong to seed 0)."""
    groups: dict[int, list[dict[str, float]]] = {}
    for row in metrics:
        groups.setdefault(int(row.get("seed", 0)), []).append(row)
    return groups


def seed_mean(metrics: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """One row per step holding the mean over seeds of every column (the seed column dropped).

    Only steps that every seed reached are kept, so an interrupted ensemble averages like with like.
    """
    steps, rows_at = _aligned(metrics)
    keys = [k for k in metrics[0] if k != "seed"]
    return [{k: float(np.mean([rows[s][k] for rows in rows_at])) for k in keys} for s in steps]


def seed_matrix(metrics: Sequence[dict[str, float]], key: str) -> tuple[list[float], np.ndarray]:
    """The steps every seed reached, and column ``key`` at them as an array (seeds x steps)."""
    steps, rows_at = _aligned(metrics)
    return steps, np.array([[rows[s][key] for s in steps] for rows in rows_at], dtype=np.float64).reshape(
        len(rows_at), len(steps))


def bands(metrics: Sequence[dict[str, float]], key: str) -> dict[str, list[float]]:
    """Per step over seeds: ``step``, ``mean``, ``std`` (ddof 1; NaN for one seed) and the quantiles
    ``q10``, ``q50``, ``q90`` of column ``key``."""
    steps, matrix = seed_matrix(metrics, key)
    values = matrix.T
    std = values.std(axis=1, ddof=1) if values.shape[1] > 1 else np.full(len(steps), math.nan)
    out = {"step": list(steps), "mean": values.mean(axis=1).tolist(), "std": std.tolist()}
    for q in QUANTILES:
        out[f"q{round(q * 100)}"] = np.quantile(values, q, axis=1).tolist()
    return out


def _aligned(metrics: Sequence[dict[str, float]]) -> tuple[list[float], list[dict[float, dict[str, float]]]]:
    """The steps every seed reached, and each seed's rows keyed by step."""
    rows_at = [{row["step"]: row for row in rows} for rows in by_seed(metrics).values()]
    return sorted(set.intersection(*(set(rows) for rows in rows_at))), rows_at

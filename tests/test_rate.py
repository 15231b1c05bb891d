"""The rate and its reading: the slope of the seed-mean curve, its jackknife interval over seeds (which covers the
true slope about as often as it says), and the regimes, each from curves built to be in it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaeconverge.diagnostics import classify, fit_rate, mean_interval
from vaeconverge.diagnostics.posterior import COLLAPSED_KL
from vaeconverge.diagnostics.rate import INTERVAL_LEVEL, MIN_SEEDS
from vaeconverge.report.readings import rate_text

# Checkpoints as train places them: log-spaced over the first half, evenly over the second.
STEPS = np.unique(np.concatenate([[0], np.geomspace(1, 5000, 10).astype(int), np.linspace(5000, 10_000, 11)[1:]]))


def curves(slope: float, seeds: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Per-seed curves c_s n^slope with a lognormal level per seed and per checkpoint."""
    n = np.maximum(STEPS, 1).astype(float)
    level = np.exp(rng.normal(0, spread, (seeds, 1)))
    return 3.0 * level * n**slope * np.exp(rng.normal(0, spread, (seeds, len(STEPS))))


def test_a_power_law_gives_its_slope_over_the_second_half() -> None:
    fit = fit_rate(STEPS, [3.0 * np.maximum(STEPS, 1) ** -0.5])
    assert fit.slope == pytest.approx(-0.5, abs=1e-9)
    assert fit.first_step == 5000 and fit.seeds == 1 and all(map(math.isnan, fit.ci))


@pytest.mark.parametrize("seeds", [4, 8])
def test_the_interval_over_seeds_covers_the_true_slope_at_about_its_level(seeds: int) -> None:
    rng = np.random.default_rng(0)
    fits = [fit_rate(STEPS, curves(-0.5, seeds, 0.3, rng)) for _ in range(400)]
    coverage = np.mean([fit.ci[0] <= -0.5 <= fit.ci[1] for fit in fits])
    assert INTERVAL_LEVEL - 0.1 <= coverage <= 0.99, coverage


def test_points_where_the_mean_is_not_positive_are_left_out() -> None:
    values = 3.0 * np.maximum(STEPS, 1) ** -1.0
    values[-3] = -1e-6  # an unbiased estimate below zero: the gradient lost in its noise
    fit = fit_rate(STEPS, [values, values])
    assert fit.slope == pytest.approx(-1.0, abs=1e-9) and fit.points == (STEPS[-1] / 2 <= STEPS).sum() - 1


def regime(grads: np.ndarray, objective: np.ndarray | None = None, kl: float = 5.0) -> str:
    objective = np.zeros_like(grads) if objective is None else objective
    return classify(STEPS, grads, objective, fit_rate(STEPS, grads), kl=kl, active_units=3).name


@pytest.mark.parametrize(("slope", "expected"), [(-1.2, "transient"), (-0.5, "noise-dominated"), (0.0, "floor")])
def test_resolved_slopes_name_their_regime(slope: float, expected: str) -> None:
    assert regime(curves(slope, 8, 0.05, np.random.default_rng(1))) == expected


def test_few_seeds_leave_the_regime_undetermined_and_wide_intervals_inconclusive() -> None:
    rng = np.random.default_rng(2)
    result = classify(STEPS, curves(-0.5, MIN_SEEDS - 1, 0.05, rng), np.zeros((MIN_SEEDS - 1, len(STEPS))),
                      None)
    assert result.label == f"undetermined ({MIN_SEEDS - 1} seeds)"
    assert regime(curves(-0.5, 4, 1.5, rng)) == "inconclusive"


def test_a_collapsed_encoder_and_a_run_leaving_its_flat_start_are_named() -> None:
    rng = np.random.default_rng(3)
    assert regime(curves(-0.5, 4, 0.05, rng), kl=COLLAPSED_KL / 2) == "collapsed"
    rising = curves(0.5, 4, 0.05, rng)
    falling = -np.log1p(np.maximum(STEPS, 1))[None, :] + rng.normal(0, 0.01, (4, len(STEPS)))
    assert regime(rising, objective=falling) == "leaving a flat start"
    assert regime(rising, objective=-falling) == "floor"  # rising with the objective: no progress


def test_mean_interval_is_a_student_t_interval() -> None:
    mean, _, high = mean_interval([-0.4, -0.5, -0.6], level=0.9)
    assert mean == pytest.approx(-0.5) and high - mean == pytest.approx(2.919986 * 0.1 / math.sqrt(3), rel=1e-5)
    assert all(map(math.isnan, mean_interval([1.0])[1:]))


def test_the_rate_line_counts_its_seeds_in_words() -> None:
    rate = {"slope": -0.5, "ci": [-0.6, -0.4], "level": 0.95, "first_step": 10, "last_step": 100, "regime": "fitted"}
    assert "95% interval [-0.60, -0.40], 1 seed)" in rate_text(rate | {"seeds": 1})
    assert ", 3 seeds)" in rate_text(rate | {"seeds": 3})

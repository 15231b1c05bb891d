"""Convergence theory: explicit bounds (``bounds``), what they read of a run (``run.AssessedRun``, a value), and a
finished run held against them (``assessment``, imported from there: it builds on ``diagnostics``)."""

from .bounds import (
    Allocation,
    adagrad_bound,
    adam_bound,
    best_allocation,
    fit_shape,
    ghadimi_lan,
    ghadimi_lan_curve,
    iwae_basis,
    noise_variance,
    predict_noise_ratio,
    sgd_constant_bound,
    sgd_constant_step,
    sgd_decreasing_bound,
    shape_curve,
    vae_adam_basis,
)
from .run import BOUND_FAMILIES, AssessedRun

__all__ = [
    "BOUND_FAMILIES",
    "Allocation",
    "AssessedRun",
    "adagrad_bound",
    "adam_bound",
    "best_allocation",
    "fit_shape",
    "ghadimi_lan",
    "ghadimi_lan_curve",
    "iwae_basis",
    "noise_variance",
    "predict_noise_ratio",
    "sgd_constant_bound",
    "sgd_constant_step",
    "sgd_decreasing_bound",
    "shape_curve",
    "vae_adam_basis",
]

"""Convergence diagnostics: the quantities the theorems speak of, measured on a model and its data."""

from .constants import (
    GradientNoise,
    gradient_noise,
    hvp_power_iteration,
    noise_from_gradients,
    smoothness,
)
from .grad_norms import (
    FullGradient,
    GradientNormTracker,
    full_objective_gradient,
    replica_squared_norms,
)
from .posterior import PosteriorUsage, posterior_usage
from .random_iterate import RandomIterate, random_iterate
from .rate import RateFit, Regime, classify, fit_rate, mean_interval
from .squared_norm import SquaredNormEstimate, unbiased_squared_norm

__all__ = [
    "FullGradient",
    "GradientNoise",
    "GradientNormTracker",
    "PosteriorUsage",
    "RandomIterate",
    "RateFit",
    "Regime",
    "SquaredNormEstimate",
    "classify",
    "fit_rate",
    "full_objective_gradient",
    "gradient_noise",
    "hvp_power_iteration",
    "mean_interval",
    "noise_from_gradients",
    "posterior_usage",
    "random_iterate",
    "replica_squared_norms",
    "smoothness",
    "unbiased_squared_norm",
]

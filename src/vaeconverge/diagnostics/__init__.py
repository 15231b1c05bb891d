"""Convergence diagnostics: the quantities the theorems speak of, measured on a model and its data."""

from .constants import (
    L_MARGIN,
    NOISE_UCB_Z,
    GradientNoise,
    VarianceParts,
    gradient_noise,
    hessian_norm,
    noise_from_gradients,
    smoothness,
    smoothness_estimate,
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
    "L_MARGIN",
    "NOISE_UCB_Z",
    "FullGradient",
    "GradientNoise",
    "GradientNormTracker",
    "PosteriorUsage",
    "RandomIterate",
    "RateFit",
    "Regime",
    "SquaredNormEstimate",
    "VarianceParts",
    "classify",
    "fit_rate",
    "full_objective_gradient",
    "gradient_noise",
    "hessian_norm",
    "mean_interval",
    "noise_from_gradients",
    "posterior_usage",
    "random_iterate",
    "replica_squared_norms",
    "smoothness",
    "smoothness_estimate",
    "unbiased_squared_norm",
]

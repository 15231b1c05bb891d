"""Convergence diagnostics: the quantities the theorems speak of, measured on a model and its data."""

from .constants import GradientNoise, gradient_noise, hvp_power_iteration, smoothness
from .grad_norms import FullGradient, GradientNormTracker, full_objective_gradient, replica_squared_norms
from .random_iterate import RandomIterate, random_iterate
from .rate import RateFit, fit_rate, slope_interval

__all__ = [
    "FullGradient",
    "GradientNoise",
    "GradientNormTracker",
    "RandomIterate",
    "RateFit",
    "fit_rate",
    "full_objective_gradient",
    "gradient_noise",
    "hvp_power_iteration",
    "random_iterate",
    "replica_squared_norms",
    "slope_interval",
    "smoothness",
]

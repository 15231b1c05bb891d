"""Convergence diagnostics: the quantities the theorems speak of, measured on a model and its data."""

from .grad_norms import FullGradient, GradientNormTracker, full_objective_gradient, squared_norm

__all__ = ["FullGradient", "GradientNormTracker", "full_objective_gradient", "squared_norm"]

"""Black-box variational inference with the VAE side's diagnostics, constants and bounds: fit q_phi(w) to a
posterior p(w | data) by stochastic gradient on the ELBO or the importance-weighted bound."""

from .config import BBVIConfig
from .families import FAMILIES, Family, FullRank, Gaussian, MeanField, PlanarFlow, build_family
from .objectives import OBJECTIVES, elbo, iwae, log_weights
from .targets import BUILTIN_TARGETS, GaussianMixture, LinearRegression, LogisticRegression, Target, build_target
from .train import BBVIResult, train

__all__ = [
    "BUILTIN_TARGETS",
    "FAMILIES",
    "OBJECTIVES",
    "BBVIConfig",
    "BBVIResult",
    "Family",
    "FullRank",
    "Gaussian",
    "GaussianMixture",
    "LinearRegression",
    "LogisticRegression",
    "MeanField",
    "PlanarFlow",
    "Target",
    "build_family",
    "build_target",
    "elbo",
    "iwae",
    "log_weights",
    "train",
]

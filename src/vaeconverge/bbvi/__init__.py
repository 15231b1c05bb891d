"""Black-box variational inference with the VAE side's diagnostics, constants and bounds: fit q_phi(w) to a
posterior p(w | data) by stochastic gradient on the ELBO or the importance-weighted bound.

The names below are imported on first use, so that reading :class:`BBVIConfig`'s defaults (the command line's
``--help``) loads no torch."""

from typing import TYPE_CHECKING

from ..registry import lazy_exports

if TYPE_CHECKING:
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

lazy_exports(__name__, {
    "BBVIConfig": ".config",
    **dict.fromkeys(("FAMILIES", "Family", "FullRank", "Gaussian", "MeanField", "PlanarFlow", "build_family"),
                    ".families"),
    **dict.fromkeys(("OBJECTIVES", "elbo", "iwae", "log_weights"), ".objectives"),
    **dict.fromkeys(("BUILTIN_TARGETS", "GaussianMixture", "LinearRegression", "LogisticRegression", "Target",
                     "build_target"), ".targets"),
    **dict.fromkeys(("BBVIResult", "train"), ".train"),
})

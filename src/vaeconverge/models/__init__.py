"""VAE models: a Gaussian encoder, a decoder with its likelihood, and the Linear VAE's closed forms."""

from .build import build_vae
from .linear import LinearVAE, PPCASolution, ppca_optimum
from .vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalGaussian,
    GaussianEncoder,
    GaussianLikelihood,
    LinearEncoder,
    SharedCholeskyGaussian,
    gaussian_kl,
)

__all__ = [
    "VAE",
    "BernoulliLikelihood",
    "DiagonalGaussian",
    "GaussianEncoder",
    "GaussianLikelihood",
    "LinearEncoder",
    "LinearVAE",
    "PPCASolution",
    "SharedCholeskyGaussian",
    "build_vae",
    "gaussian_kl",
    "ppca_optimum",
]

"""vaeconverge: train Variational Autoencoders and see the convergence the theory guarantees."""

from .api import Run, fit, load_run
from .config import ConfigError, RunConfig, SyntheticConfig
from .engine.checkpoint import load_model
from .models import VAE, LinearVAE, build_vae, ppca_optimum
from .monitor import ConvergenceMonitor
from .objectives import ELBO, IWAE, build_objective
from .runtime import flush_denormals

__version__ = "0.1.0"

__all__ = [
    "ELBO",
    "IWAE",
    "VAE",
    "ConfigError",
    "ConvergenceMonitor",
    "LinearVAE",
    "Run",
    "RunConfig",
    "SyntheticConfig",
    "build_objective",
    "build_vae",
    "fit",
    "flush_denormals",
    "load_model",
    "load_run",
    "ppca_optimum",
]

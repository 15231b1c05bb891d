"""vaeconverge: train Variational Autoencoders and see the convergence the theory guarantees.

The names below are imported on first use (:func:`~vaeconverge.registry.lazy_exports`), so that ``import
vaeconverge`` and the command line's ``--help`` load no torch."""

from typing import TYPE_CHECKING

from .registry import lazy_exports

if TYPE_CHECKING:
    from .api import Run, fit, load_run, read_config, resume
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
    "read_config",
    "resume",
]

lazy_exports(__name__, {
    **dict.fromkeys(("Run", "fit", "load_run", "read_config", "resume"), ".api"),
    **dict.fromkeys(("ConfigError", "RunConfig", "SyntheticConfig"), ".config"),
    "load_model": ".engine.checkpoint",
    **dict.fromkeys(("VAE", "LinearVAE", "build_vae", "ppca_optimum"), ".models"),
    "ConvergenceMonitor": ".monitor",
    **dict.fromkeys(("ELBO", "IWAE", "build_objective"), ".objectives"),
    "flush_denormals": ".runtime",
})

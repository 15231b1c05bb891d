"""Data sets held as one (N, D) tensor: uint8 pixels for the image sets, floats otherwise (:mod:`.storage`
converts per batch), with validation that names the problem."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..validation import ConfigError
from .arrays import as_float32_tensor, load_array_file
from .batches import PermutationBatches
from .digits import load_digits_tensor
from .local_files import LOCAL_DATA, load_local
from .storage import Moments, as_float, float_dtype, moments
from .synthetic import SyntheticLinear, make_synthetic_linear

if TYPE_CHECKING:
    import numpy as np

    from ..config import RunConfig

BUILTIN_DATA = ("digits", "synthetic-linear")

__all__ = [
    "Dataset",
    "Moments",
    "PermutationBatches",
    "SyntheticLinear",
    "array_dataset",
    "as_float",
    "check_data",
    "float_dtype",
    "load_dataset",
    "make_synthetic_linear",
    "moments",
]

@dataclass(frozen=True)
class Dataset:
    """Training data ``x`` (N, D) as stored (uint8 pixels or floats: read rows through :func:`as_float`) and,
    for synthetic data, the generating model."""

    name: str
    x: torch.Tensor
    truth: SyntheticLinear | None = None

def load_dataset(config: RunConfig, progress: bool = True) -> Dataset:
    """Load and validate the data named by ``config.data`` (a built-in name or a file path); ``progress``: a
    progress bar for long work (decoding CelebA into its cache)."""
    truth = None
    if config.data == "digits":
        x = load_digits_tensor()
    elif config.data == "synthetic-linear":
        s = config.synthetic
        truth = make_synthetic_linear(s.n_samples, s.data_dim, s.latent_dim, s.noise_std, s.seed)
        x = truth.x
    elif config.data in LOCAL_DATA:
        x = load_local(config.data, config.data_dir, progress)
    elif "." in config.data or "/" in config.data:
        x = load_array_file(config.data)
    else:
        raise ConfigError(
            "--data", f"unknown data set {config.data!r}; use one of {', '.join(BUILTIN_DATA + LOCAL_DATA)} or a "
            "file path"
        )
    check_data(x, config.likelihood, config.batch_size)
    return Dataset(name=config.data, x=x, truth=truth)

def array_dataset(array: np.ndarray | torch.Tensor, config: RunConfig) -> Dataset:
    """A user's (N, D) array in memory, numpy or torch, as a data set named ``config.data``: converted and
    validated as an array file's would be."""
    x = as_float32_tensor(array, "the array")
    check_data(x, config.likelihood, config.batch_size)
    return Dataset(name=config.data, x=x)

def check_data(x: torch.Tensor, likelihood: str, batch_size: int) -> None:
    """Raise :class:`ConfigError` unless ``x`` is a finite, non-empty (N, D) array usable as asked."""
    if x.ndim != 2:
        raise ConfigError("--data", f"expected a 2-D array (N examples x D features), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError("--data", f"the data are empty (shape {tuple(x.shape)})")
    if x.dtype != torch.uint8:  # pixels are finite and lie in [0, 1] once divided by 255: nothing to scan
        _check_values(x, likelihood)
    if batch_size > x.shape[0]:
        raise ConfigError("--batch-size", f"{batch_size} is larger than the {x.shape[0]} training examples")

def _check_values(x: torch.Tensor, likelihood: str) -> None:
    """Floating data: finite, and in [0, 1] under a Bernoulli likelihood."""
    if not x.is_floating_point():
        raise ConfigError("--data", f"expected floats or uint8 pixels, found dtype {x.dtype}")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=1).nonzero()[0, 0].item()
        raise ConfigError("--data", f"contains NaN or infinite values (first in row {bad})")
    if likelihood == "bernoulli" and (x.min() < 0 or x.max() > 1):
        raise ConfigError(
            "--likelihood",
            f"bernoulli needs data in [0, 1]; found values in [{x.min().item():.4g}, {x.max().item():.4g}]",
        )

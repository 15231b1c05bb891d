"""Synthetic data from a probabilistic-PCA model with known parameters (the Linear VAE's ground truth)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime import require_memory


@dataclass(frozen=True)
class SyntheticLinear:
    """Samples x_i = W z_i + b + c eps_i with z_i ~ N(0, I_k), eps_i ~ N(0, I_D), and the true W, b, c."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    noise_std: float


def make_synthetic_linear(
    n_samples: int, data_dim: int, latent_dim: int, noise_std: float, seed: int = 0
) -> SyntheticLinear:
    """Draw ``n_samples`` points of dimension ``data_dim`` from a seeded pPCA model (refused, before drawing,
    when they would not fit in memory)."""
    require_memory("--data-dim" if data_dim > n_samples else "--n-samples", 8 * n_samples * (latent_dim + 3 * data_dim),
                   f"synthetic-linear data of {n_samples:,} x {data_dim:,} (--n-samples x --data-dim)")
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, latent_dim, generator=gen, dtype=torch.float64)
    bias = torch.randn(data_dim, generator=gen, dtype=torch.float64)
    z = torch.randn(n_samples, latent_dim, generator=gen, dtype=torch.float64)
    eps = torch.randn(n_samples, data_dim, generator=gen, dtype=torch.float64)
    x = z @ weight.T + bias + noise_std * eps
    return SyntheticLinear(x=x.float(), weight=weight, bias=bias, noise_std=noise_std)

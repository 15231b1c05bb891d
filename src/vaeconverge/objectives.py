"""What is optimised: per-example ELBO (K samples, KL weight beta) and the IWAE bound (K samples).

An objective is a pure function of (model, batch, noise): the noise eps ~ N(0, I) of shape (K, B, latent)
is drawn by the caller, so the same objective serves training, diagnostics and replicated runs. The sample
dimension is counted from the right, so a model with parameters stacked over T replicas evaluates its x
(T, B, D) and eps (T, K, B, latent) with the same code, giving values (T, B).
Values are per example and are to be *maximised*; the training loss is their negated mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .config import RunConfig
from .models.vae import VAE, standard_normal_log_prob


class Objective(Protocol):
    """Per-example objective values, shape (B,), from a batch x (B, D) and noise eps (K, B, latent)."""

    samples: int

    def __call__(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor: ...


def draw_noise(
    samples: int, batch: int, latent_dim: int, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal reparameterisation noise of shape (K, B, latent)."""
    return torch.randn(samples, batch, latent_dim, generator=generator, dtype=dtype)


@dataclass(frozen=True)
class ELBO:
    """(1/K) sum_k log p(x | z_k) - beta KL(q(. | x) || N(0, I)), KL in closed form (beta = 1: the VAE)."""

    samples: int = 1
    beta: float = 1.0

    def __call__(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        q = model.encode(x)
        return model.log_likelihood(x, q.rsample(eps)).mean(-2) - self.beta * q.kl_to_prior()


@dataclass(frozen=True)
class IWAE:
    """log (1/K) sum_k p(x, z_k) / q(z_k | x): the importance-weighted bound itself, via logsumexp."""

    samples: int = 1

    def __call__(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        q = model.encode(x)
        z = q.rsample(eps)
        log_w = model.log_likelihood(x, z) + standard_normal_log_prob(z) - q.log_prob_of_sample(eps)
        return torch.logsumexp(log_w, dim=-2) - math.log(eps.shape[-3])


class ObjectiveModule(nn.Module):
    """``objective(model, x, eps)`` as a module's forward, so that ``torch.func.functional_call`` can swap the
    model's parameters (their names gain a ``model.`` prefix) although objectives call ``encode``, not
    ``forward``."""

    def __init__(self, model: VAE, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.objective(self.model, x, eps)


def build_objective(config: RunConfig) -> Objective:
    """The objective named by ``config.objective``."""
    if config.objective == "elbo":
        return ELBO(samples=config.samples, beta=config.beta)
    if config.objective == "iwae":
        return IWAE(samples=config.samples)
    raise ValueError(f"unknown objective {config.objective!r}")

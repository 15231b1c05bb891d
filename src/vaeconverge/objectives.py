"""What is optimised: per-example ELBO (K samples, KL weight beta) and the IWAE bound (K samples).

An objective is a pure function of (model, batch, noise): the noise eps ~ N(0, I) of shape (K, B, latent)
is drawn by the caller, so the same objective serves training, diagnostics and replicated runs. The sample
dimension is counted from the right, so a model with parameters stacked over T replicas evaluates its x
(T, B, D) and eps (T, K, B, latent) with the same code, giving values (T, B).
Values are per example and are to be *maximised*. An objective has two faces, as Pyro separates ``loss`` from
``differentiable_loss``: its value, which runs report and the diagnostics measure, and its surrogate, whose
negated mean is the training loss; the surrogate is the value unless an objective says otherwise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .models.vae import VAE, standard_normal_log_prob
from .registry import Registry

if TYPE_CHECKING:
    from .config import RunConfig

# The shapes of the paper's rates: the ELBO's, whatever its KL weight, and the importance-weighted bound's.
FAMILIES = ("elbo", "iwae")


# The faces of an objective an :class:`ObjectiveModule` can evaluate.
FACES = ("value", "surrogate")


class Objective(ABC):
    """Per-example values, shape (B,), of a batch x (B, D) under noise eps (K, B, latent), in two faces: the
    :meth:`value` reported and measured, and the :meth:`surrogate` that training differentiates. Calling an
    objective gives its value."""

    samples: int

    @abstractmethod
    def value(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The objective itself per example: what runs report and what the diagnostics measure."""

    def surrogate(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The per-example expression whose gradient training follows: the value unless a subclass says otherwise."""
        return self.value(model, x, eps)

    def __call__(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The value, so that every caller using an objective as a function measures the objective itself."""
        return self.value(model, x, eps)


def draw_noise(
    samples: int, batch: int, latent_dim: int, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal reparameterisation noise of shape (K, B, latent), on the generator's device."""
    device = generator.device if generator is not None else None
    return torch.randn(samples, batch, latent_dim, generator=generator, dtype=dtype, device=device)


@dataclass(frozen=True)
class ELBO(Objective):
    """(1/K) sum_k log p(x | z_k) - beta KL(q(. | x) || N(0, I)), KL in closed form (beta = 1: the VAE)."""

    samples: int = 1
    beta: float = 1.0

    def value(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        q = model.encode(x)
        return model.log_likelihood(x, q.rsample(eps)).mean(-2) - self.beta * q.kl_to_prior()


@dataclass(frozen=True)
class IWAE(Objective):
    """log (1/K) sum_k p(x, z_k) / q(z_k | x): the importance-weighted bound itself, via logsumexp."""

    samples: int = 1

    def value(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        q = model.encode(x)
        z = q.rsample(eps)
        log_w = model.log_likelihood(x, z) + standard_normal_log_prob(z) - q.log_prob_of_sample(eps)
        return torch.logsumexp(log_w, dim=-2) - math.log(eps.shape[-3])


class ObjectiveModule(nn.Module):
    """One face of ``objective`` on ``model`` as a module's forward (``face``: one of :data:`FACES`), so that
    ``torch.func.functional_call`` can swap the model's parameters (their names gain a ``model.`` prefix) although
    objectives call ``encode``, not ``forward``."""

    def __init__(self, model: VAE, objective: Objective, face: str = "value") -> None:
        super().__init__()
        if face not in FACES:
            raise ValueError(f"unknown face {face!r}; choose one of {', '.join(FACES)}")
        self.model = model
        self.objective = objective
        self.face = face

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if self.face == "surrogate":
            return self.objective.surrogate(self.model, x, eps)
        return self.objective(self.model, x, eps)


@dataclass(frozen=True)
class ObjectiveSpec:
    """One ``--objective`` choice: its builder from (K samples, KL weight beta), the paper's rate-shape family it
    belongs to (one of :data:`FAMILIES`), and whether beta changes it."""

    name: str
    build: Callable[[int, float], Objective]
    family: str
    uses_beta: bool


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective", ((spec.name, spec) for spec in (
    ObjectiveSpec("elbo", lambda samples, beta: ELBO(samples=samples, beta=beta), family="elbo", uses_beta=True),
    ObjectiveSpec("iwae", lambda samples, beta: IWAE(samples=samples), family="iwae", uses_beta=False),
)))


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add ``spec`` as a new ``--objective`` choice, for configurations, sweeps and the CLI alike."""
    if spec.family not in FAMILIES:
        raise ValueError(f"objective {spec.name!r}: family must be one of {', '.join(FAMILIES)} (got {spec.family!r})")
    return OBJECTIVES.register(spec.name, spec)


def objective_spec(name: str) -> ObjectiveSpec:
    """The registered entry called ``name``; a ValueError listing the known names otherwise."""
    return OBJECTIVES.lookup(name)


def make_objective(name: str, samples: int = 1, beta: float = 1.0) -> Objective:
    """The objective called ``name`` with K = ``samples`` and KL weight ``beta``, from plain values."""
    return objective_spec(name).build(samples, beta)


def build_objective(config: RunConfig) -> Objective:
    """The objective named by ``config.objective``, with its ``samples`` and ``beta``."""
    return make_objective(config.objective, config.samples, config.beta)

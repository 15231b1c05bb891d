"""What is optimised: per-example ELBO (K samples, KL weight beta), the IWAE bound (K samples; its gradient standard or
doubly reparameterised) and the VR-IWAE bound (K samples, Renyi order alpha).

An objective is a pure function of (model, batch, noise): the noise eps ~ N(0, I) of shape (K, B, latent)
is drawn by the caller, so the same objective serves training, diagnostics and replicated runs. The sample
dimension is counted from the right, so a model with parameters stacked over T replicas evaluates its x
(T, B, D) and eps (T, K, B, latent) with the same code, giving values (T, B).
Values are per example and are to be *maximised*. An objective has two faces, as Pyro separates ``loss`` from
``differentiable_loss``: its value, which runs report and the diagnostics measure, and its surrogate, whose
negated mean is the training loss; the surrogate is the value unless an objective says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .models.vae import VAE, DiagonalGaussian, SharedCholeskyGaussian, standard_normal_log_prob
from .registry import Registry
from .validation import ConfigError, check_choice, check_fraction

if TYPE_CHECKING:
    from .config import RunConfig

# The shapes of the paper's rates: the ELBO's, whatever its KL weight, and the importance-weighted bound's.
FAMILIES = ("elbo", "iwae")


# The faces of an objective an :class:`ObjectiveModule` can evaluate.
FACES = ("value", "surrogate")

# How IWAE's gradient is estimated: the reparameterised gradient of the bound, or the doubly-reparameterised one.
ESTIMATORS = ("standard", "dreg")

# The options beyond K and beta that only some objectives take (see ``ObjectiveSpec.takes``): each one's flag and
# the value that leaves it unset. None means that an objective taking the option needs it given.
OPTIONS: dict[str, tuple[str, Any]] = {"alpha": ("--alpha", None), "estimator": ("--estimator", "standard")}


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


def _log_weights(model: VAE, x: torch.Tensor, eps: torch.Tensor
                 ) -> tuple[DiagonalGaussian | SharedCholeskyGaussian, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The posterior q, its samples z = rsample(eps), log p(x, z) and the log importance weights
    log w = log p(x, z) - log q(z | x), the last two of shape (K, B)."""
    q = model.encode(x)
    z = q.rsample(eps)
    log_joint = model.log_likelihood(x, z) + standard_normal_log_prob(z)
    return q, z, log_joint, log_joint - q.log_prob_of_sample(eps)


def _detached(q: DiagonalGaussian | SharedCholeskyGaussian) -> DiagonalGaussian | SharedCholeskyGaussian:
    """The same posterior with its parameters cut from the graph, so that its density passes gradient only
    through the point it is evaluated at."""
    return dataclasses.replace(q, **{f.name: getattr(q, f.name).detach() for f in dataclasses.fields(q)})


@dataclass(frozen=True)
class IWAE(Objective):
    """log (1/K) sum_k p(x, z_k) / q(z_k | x): the importance-weighted bound itself, via logsumexp. Its
    ``estimator`` (one of :data:`ESTIMATORS`) says which gradient training follows: the bound's own ("standard"),
    or the doubly-reparameterised one ("dreg", Tucker et al. 2019), whose encoder SNR does not vanish as K grows."""

    samples: int = 1
    estimator: str = "standard"

    def __post_init__(self) -> None:
        check_choice("--estimator", self.estimator, ESTIMATORS)

    def value(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        *_, log_w = _log_weights(model, x, eps)
        return torch.logsumexp(log_w, dim=-2) - math.log(eps.shape[-3])

    def surrogate(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The bound's value; with "dreg", its gradient is DReG's: sum_k w~_k grad log p(x, z_k) for the decoder
        and sum_k w~_k^2 (d log w_k / dz) (dz / dphi) for the encoder, w~ the normalised weights held fixed."""
        if self.estimator == "standard":
            return self.value(model, x, eps)
        q, z, log_joint, log_w = _log_weights(model, x, eps)
        weights = torch.softmax(log_w, dim=-2).detach()
        squared = weights.square()
        # log w_k with the encoder's parameters reaching it only through z_k: the score of q is left out.
        pathwise = log_joint - _detached(q).log_prob(z)
        # log p(x | z_k) at z_k held fixed tops the decoder's weights up from w~_k^2 to w~_k.
        decoder_only = model.log_likelihood(x, z.detach())
        gradient = (squared * pathwise + (weights - squared) * decoder_only).sum(-2)
        bound = torch.logsumexp(log_w, dim=-2) - math.log(eps.shape[-3])
        return bound.detach() + (gradient - gradient.detach())


@dataclass(frozen=True, kw_only=True)
class VRIWAE(Objective):
    """(1 / (1 - alpha)) log (1/K) sum_k w_k^(1 - alpha), w_k = p(x, z_k) / q(z_k | x): the VR-IWAE bound (Daudel,
    Benton, Shi, Doucet 2023), via logsumexp. alpha in [0, 1); alpha = 0 is IWAE, and the bound falls as alpha
    grows (towards the ELBO as alpha -> 1), trading IWAE's tightness for a better encoder gradient SNR."""

    samples: int = 1
    alpha: float

    def __post_init__(self) -> None:
        check_fraction("--alpha", self.alpha)

    def value(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        *_, log_w = _log_weights(model, x, eps)
        power = 1.0 - self.alpha
        return (torch.logsumexp(power * log_w, dim=-2) - math.log(eps.shape[-3])) / power


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
    """One ``--objective`` choice: its builder, called with (K samples, KL weight beta) and, as keywords, the
    options of :data:`OPTIONS` it ``takes``; the paper's rate-shape family it belongs to (one of
    :data:`FAMILIES`); and whether beta changes it."""

    name: str
    build: Callable[..., Objective]
    family: str
    uses_beta: bool
    takes: tuple[str, ...] = ()


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective", ((spec.name, spec) for spec in (
    ObjectiveSpec("elbo", lambda samples, beta: ELBO(samples=samples, beta=beta), family="elbo", uses_beta=True),
    ObjectiveSpec("iwae", lambda samples, beta, estimator: IWAE(samples=samples, estimator=estimator),
                  family="iwae", uses_beta=False, takes=("estimator",)),
    ObjectiveSpec("vr-iwae", lambda samples, beta, alpha: VRIWAE(samples=samples, alpha=alpha),
                  family="iwae", uses_beta=False, takes=("alpha",)),
)))


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add ``spec`` as a new ``--objective`` choice, for configurations, sweeps and the CLI alike."""
    if spec.family not in FAMILIES:
        raise ValueError(f"objective {spec.name!r}: family must be one of {', '.join(FAMILIES)} (got {spec.family!r})")
    unknown = sorted(set(spec.takes) - set(OPTIONS))
    if unknown:
        raise ValueError(f"objective {spec.name!r}: takes unknown option {unknown[0]!r}; known: {', '.join(OPTIONS)}")
    return OBJECTIVES.register(spec.name, spec)


def objective_spec(name: str) -> ObjectiveSpec:
    """The registered entry called ``name``; a ValueError listing the known names otherwise."""
    return OBJECTIVES.lookup(name)


def objective_options(name: str, alpha: float | None = None, estimator: str = "standard") -> dict[str, Any]:
    """The keywords of :data:`OPTIONS` that objective ``name``'s builder takes; a :class:`ConfigError` naming the
    flag of an option out of range, set for an objective that does not take it, or missing where one needs it."""
    spec = objective_spec(name)
    check_choice("--estimator", estimator, ESTIMATORS)
    if alpha is not None:
        check_fraction("--alpha", alpha)
    given = {"alpha": alpha, "estimator": estimator}
    for option, (flag, unset) in OPTIONS.items():
        if option in spec.takes and given[option] is None:
            raise ConfigError(flag, f"--objective {name} needs it")
        if option not in spec.takes and given[option] != unset:
            takers = " or ".join(other for other, entry in OBJECTIVES.items() if option in entry.takes)
            raise ConfigError(flag, f"{given[option]} applies to --objective {takers} only, not {name}")
    return {option: given[option] for option in spec.takes}


def make_objective(name: str, samples: int = 1, beta: float = 1.0, alpha: float | None = None,
                   estimator: str = "standard") -> Objective:
    """The objective called ``name`` with K = ``samples``, KL weight ``beta``, and the options it takes (Renyi order
    ``alpha`` for vr-iwae, gradient ``estimator`` for iwae), from plain values; see :func:`objective_options`."""
    return objective_spec(name).build(samples, beta, **objective_options(name, alpha, estimator))


def build_objective(config: RunConfig) -> Objective:
    """The objective named by ``config.objective``, with its ``samples``, ``beta``, ``alpha`` and ``estimator``."""
    return make_objective(config.objective, config.samples, config.beta, config.alpha, config.estimator)

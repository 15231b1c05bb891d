"""The objectives of BBVI as per-replica values to maximise, from a family, a target and noise.

With M groups of K samples, eps of shape (T, M, K, dim):
- ELBO: the mean over all M K samples of log p(w, data) - log q(w), an unbiased estimate of
  E_q[log p(w, data) - log q(w)] <= log p(data).
- IWAE (importance-weighted bound): the mean over the M groups of log (1/K) sum_k p(w_k, data) / q(w_k),
  whose expectation is non-decreasing in K and tends to log p(data) (Burda et al., 2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..registry import Registry
from .families import Family
from .targets import Target

# (family, target, eps (T, M, K, dim), data index or None) -> each replica's value (T,)
BBVIObjective = Callable[[Family, Target, Tensor, Tensor | None], Tensor]


def log_weights(family: Family, target: Target, eps: Tensor, index: Tensor | None = None) -> Tensor:
    """log p(w, data) - log q(w) for w = T_phi(eps), eps (T, ..., dim): shape (T, ...)."""
    replicas, dim = eps.shape[0], eps.shape[-1]
    w, log_q = family.rsample(eps.reshape(replicas, -1, dim))
    return (target.log_prob(w, index) - log_q).reshape(eps.shape[:-1])


def elbo(family: Family, target: Target, eps: Tensor, index: Tensor | None = None) -> Tensor:
    """Monte Carlo ELBO of each replica (T,) from eps (T, M, K, dim)."""
    return log_weights(family, target, eps, index).mean(dim=(1, 2))


def iwae(family: Family, target: Target, eps: Tensor, index: Tensor | None = None) -> Tensor:
    """Importance-weighted bound with K = eps.shape[2] samples, averaged over M = eps.shape[1] groups: (T,)."""
    log_w = log_weights(family, target, eps, index)
    return (torch.logsumexp(log_w, dim=2) - math.log(log_w.shape[2])).mean(dim=1)


OBJECTIVES: Registry[BBVIObjective] = Registry("objective", {"elbo": elbo, "iwae": iwae}.items())


def register_objective(name: str, objective: BBVIObjective) -> BBVIObjective:
    """Add ``objective`` as a new ``vaeconverge bbvi --objective`` choice called ``name``."""
    return OBJECTIVES.register(name, objective)


def build_objective(name: str) -> BBVIObjective:
    """The objective called ``name`` (one of :data:`OBJECTIVES`); a ValueError listing the known names otherwise."""
    return OBJECTIVES.lookup(name)

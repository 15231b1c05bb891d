"""Targets of black-box variational inference: unnormalised log-densities log p(w, data) of parameters w.

A target whose log-density is a prior plus a sum of N per-datum terms can be minibatched: given the rows
``index`` of a batch of B data, :meth:`Target.log_prob` returns the unbiased estimate
log p(w) + (N / B) sum_{i in batch} log p(y_i | w), so that the batch size B enters the gradient noise as it
does for a VAE. Built-ins: Bayesian linear regression (conjugate: exact posterior and evidence), Bayesian
logistic regression on scikit-learn's breast-cancer data, and a two-component Gaussian mixture (a log-density
that is not concave, with a known normaliser).
"""

from __future__ import annotations

import copy as _copy
import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

DTYPE = torch.float64  # BBVI models are small: float64 keeps the closed-form oracles exact to rounding


@runtime_checkable
class Target(Protocol):
    """An unnormalised log-density of w in R^dim, optionally a sum over ``n_data`` terms that can be minibatched."""

    name: str
    dim: int
    n_data: int  # N, the number of per-datum terms; 1 for a density without data (no minibatching)
    log_evidence: float | None  # log of the normaliser where known in closed form

    def log_prob(self, w: Tensor, index: Tensor | None = None) -> Tensor:
        """log p(w, data) of each sample of w (T, S, dim), shape (T, S); with ``index`` (T, B), replica t's
        unbiased estimate from its own batch of rows ``index[t]``."""
        ...


def _gaussian_log_prior(w: Tensor, variance: float) -> Tensor:
    """log N(w; 0, variance I), summed over the last dimension."""
    return -0.5 * (w.square().sum(-1) / variance + w.shape[-1] * math.log(2 * math.pi * variance))


class _Regression:
    """A Gaussian prior N(0, prior_variance I) on w plus a sum of per-datum log-likelihoods of (x_i, y_i)."""

    def __init__(self, name: str, x: Tensor, y: Tensor, prior_variance: float) -> None:
        self.name, self.x, self.y = name, x.to(DTYPE), y.to(DTYPE)
        self.n_data, self.dim = self.x.shape
        self.prior_variance = prior_variance

    def _log_likelihood(self, linear: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def log_prob(self, w: Tensor, index: Tensor | None = None) -> Tensor:
        if index is None:
            x, y, scale = self.x, self.y, 1.0
        else:  # (T, B, dim) and (T, 1, B): each replica's own batch
            x, y, scale = self.x[index], self.y[index].unsqueeze(1), self.n_data / index.shape[-1]
        linear = w @ x.transpose(-1, -2)  # (T, S, B): x_i . w for every sample and datum
        return _gaussian_log_prior(w, self.prior_variance) + scale * self._log_likelihood(linear, y).sum(-1)


class LinearRegression(_Regression):
    """y_i = x_i . w + noise, noise ~ N(0, noise_std^2) known, w ~ N(0, prior_variance I): conjugate, so the
    posterior N(mean, covariance) and the log evidence log p(y) are closed forms."""

    def __init__(self, x: Tensor, y: Tensor, noise_std: float = 1.0, prior_variance: float = 1.0) -> None:
        super().__init__("linear-regression", x, y, prior_variance)
        self.noise_variance = noise_std**2
        precision = torch.eye(self.dim, dtype=DTYPE) / prior_variance + self.x.T @ self.x / self.noise_variance
        self.posterior_covariance = torch.linalg.inv(precision)
        self.posterior_mean = self.posterior_covariance @ self.x.T @ self.y / self.noise_variance
        marginal = self.noise_variance * torch.eye(self.n_data, dtype=DTYPE) + prior_variance * self.x @ self.x.T
        self.log_evidence = MultivariateNormal(torch.zeros(self.n_data, dtype=DTYPE), marginal).log_prob(self.y).item()

    def _log_likelihood(self, linear: Tensor, y: Tensor) -> Tensor:
        return -0.5 * ((y - linear).square() / self.noise_variance + math.log(2 * math.pi * self.noise_variance))


class LogisticRegression(_Regression):
    """P(y_i = 1 | w) = sigmoid(x_i . w), w ~ N(0, prior_variance I); no closed-form evidence."""

    log_evidence = None

    def __init__(self, x: Tensor, y: Tensor, prior_variance: float = 1.0) -> None:
        super().__init__("logistic-regression", x, y, prior_variance)

    def _log_likelihood(self, linear: Tensor, y: Tensor) -> Tensor:
        return y * linear - torch.nn.functional.softplus(linear)


class GaussianMixture:
    """p(w) = (1/2) N(w; m, s^2 I) + (1/2) N(w; -m, s^2 I): bimodal, so log p is not concave; normalised,
    so the log evidence is 0."""

    n_data = 1
    log_evidence = 0.0

    def __init__(self, dim: int = 2, separation: float = 2.0, std: float = 0.7) -> None:
        self.name, self.dim, self.std = "mixture", dim, std
        self.center = torch.full((dim,), separation / math.sqrt(dim), dtype=DTYPE)

    def log_prob(self, w: Tensor, index: Tensor | None = None) -> Tensor:
        components = torch.stack([w - self.center, w + self.center])
        log_normal = _gaussian_log_prior(components, self.std**2)
        return torch.logsumexp(log_normal, dim=0) - math.log(2)


def linear_regression(n: int = 50, dim: int = 4, noise_std: float = 1.0, seed: int = 0) -> LinearRegression:
    """The built-in conjugate target: n examples of dim standard-normal features, weights drawn from the prior."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=DTYPE)
    w = torch.randn(dim, generator=generator, dtype=DTYPE)
    y = x @ w + noise_std * torch.randn(n, generator=generator, dtype=DTYPE)
    return LinearRegression(x, y, noise_std)


def breast_cancer() -> LogisticRegression:
    """Logistic regression on scikit-learn's breast-cancer data (569 x 30, shipped with scikit-learn):
    standardised features and an intercept column, w ~ N(0, I)."""
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    x = torch.as_tensor(features, dtype=DTYPE)
    x = (x - x.mean(0)) / x.std(0)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=DTYPE)], dim=1)
    return LogisticRegression(x, torch.as_tensor(labels, dtype=DTYPE))


BUILTIN_TARGETS = {
    "linear-regression": linear_regression,
    "logistic-regression": breast_cancer,
    "mixture": GaussianMixture,
}


def on_device(target: Target, device: torch.device) -> Target:
    """``target`` with its data and closed forms (every tensor it holds) on ``device``: a copy where any moves."""
    moved = {name: value.to(device) for name, value in vars(target).items()
             if isinstance(value, Tensor) and value.device != device}
    if not moved:
        return target
    copy = _copy.copy(target)
    vars(copy).update(moved)
    return copy


def build_target(name: str) -> Target:
    """The built-in target called ``name`` (a key of :data:`BUILTIN_TARGETS`)."""
    if name not in BUILTIN_TARGETS:
        raise ValueError(f"unknown target {name!r}")
    return BUILTIN_TARGETS[name]()

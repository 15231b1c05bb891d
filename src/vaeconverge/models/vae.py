"""The VAE: prior N(0, I), Gaussian encoder q_phi(z | x), decoder G_theta(z) with a likelihood p_theta(x | z).

The model only says what the distributions are; what is optimised lives in ``objectives.py``. Shapes: a batch
x is (B, D), noise and samples are (K, B, latent); with parameters stacked over T replicas (``nn/layers.py``)
every one of them gains a leading T, which is why sample dimensions are counted from the right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.storage import Moments, as_float, moments
from ..nn.layers import Linear, per_replica
from ..nn.networks import LOGVAR_HEAD_RANGE, MEAN_HEAD_RANGE, NetworkSpec, build_body, build_decoder_layers

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mean, diag e^logvar) || N(0, I) ) in closed form, summed over the last dimension."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


@dataclass(frozen=True)
class DiagonalGaussian:
    """q(z | x) = N(mean, diag e^logvar) for a batch: reparameterised samples, their density, KL to the prior."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def rsample(self, eps: torch.Tensor) -> torch.Tensor:
        """z = mean + sigma * eps for noise eps of shape (K, B, latent)."""
        return self.mean.unsqueeze(-3) + (0.5 * self.logvar).exp().unsqueeze(-3) * eps

    def log_prob_of_sample(self, eps: torch.Tensor) -> torch.Tensor:
        """log q(z | x) at z = rsample(eps): log N(eps; 0, I) - (1/2) sum log var."""
        return standard_normal_log_prob(eps) - 0.5 * self.logvar.sum(-1).unsqueeze(-2)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z | x) of given samples z (K, B, latent), differentiable in z as well as in the parameters."""
        return self.log_prob_of_sample((z - self.mean.unsqueeze(-3)) * (-0.5 * self.logvar).exp().unsqueeze(-3))

    def kl_to_prior(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, in closed form."""
        return gaussian_kl(self.mean, self.logvar)


@dataclass(frozen=True)
class SharedCholeskyGaussian:
    """q(z | x) = N(mean(x), L L^T) with one lower-triangular L (positive diagonal) shared by all x."""

    mean: torch.Tensor
    scale_tril: torch.Tensor

    def rsample(self, eps: torch.Tensor) -> torch.Tensor:
        return self.mean.unsqueeze(-3) + eps @ self.scale_tril.mT.unsqueeze(-3)

    def _log_det_tril(self) -> torch.Tensor:
        return self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def log_prob_of_sample(self, eps: torch.Tensor) -> torch.Tensor:
        log_density = standard_normal_log_prob(eps)
        return log_density - per_replica(self._log_det_tril(), log_density)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z | x) of given samples z (K, B, latent): their noise solves eps L^T = z - mean."""
        eps = torch.linalg.solve_triangular(self.scale_tril.mT.unsqueeze(-3), z - self.mean.unsqueeze(-3),
                                            upper=True, left=False)
        return self.log_prob_of_sample(eps)

    def kl_to_prior(self) -> torch.Tensor:
        # KL = (1/2) (||mean||^2 + tr(L L^T) - d - log det L L^T)
        tril = self.scale_tril
        const = 0.5 * (tril.square().sum((-2, -1)) - tril.shape[-1]) - self._log_det_tril()
        mean_term = 0.5 * self.mean.square().sum(-1)
        return mean_term + per_replica(const, mean_term)


class Encoder(nn.Module):
    """Base of the encoders: inputs are standardised by fixed per-feature statistics (set by
    ``VAE.init_from_data_``), a reparameterisation of the first affine layer that changes conditioning,
    not the model family."""

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.register_buffer("input_shift", torch.zeros(data_dim))
        self.register_buffer("input_scale", torch.ones(data_dim))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_shift) / self.input_scale


class GaussianEncoder(Encoder):
    """x -> diagonal Gaussian q_phi(z | x) = N(mu(x), diag sigma^2(x)): a body, a mean head, a log-variance head."""

    def __init__(self, data_dim: int, latent_dim: int, spec: NetworkSpec) -> None:
        super().__init__(data_dim)
        self.body, width = build_body(data_dim, spec)
        self.mean = nn.Sequential(Linear(width, latent_dim), spec.head_clip(MEAN_HEAD_RANGE))
        self.logvar = nn.Sequential(Linear(width, latent_dim), spec.head_clip(LOGVAR_HEAD_RANGE))

    def forward(self, x: torch.Tensor) -> DiagonalGaussian:
        h = self.body(self.standardise(x))
        # in x's precision: under bf16 autocast only the networks' products run in bfloat16
        return DiagonalGaussian(self.mean(h).to(x.dtype), self.logvar(h).to(x.dtype))


class LinearEncoder(Encoder):
    """The Linear VAE's encoder: mean V x + e and one covariance L L^T shared by all x.

    The covariance is full (Cholesky, log-parameterised diagonal) rather than the theory's diagonal: it
    contains the diagonal case, and it makes the ELBO equal log p(x) at the optimal encoder for *every*
    decoder W, which removes the slow rotational mode a diagonal covariance puts on the way to pPCA.
    """

    stacks_replicas = True

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__(data_dim)
        self.mean = Linear(data_dim, latent_dim)
        self.log_diag = nn.Parameter(torch.zeros(latent_dim))
        self.off_diag = nn.Parameter(torch.zeros(latent_dim * (latent_dim - 1) // 2))
        self.register_buffer("tril_index", torch.tril_indices(latent_dim, latent_dim, -1), persistent=False)

    def scale_tril(self) -> torch.Tensor:
        """L: exp(log_diag) on the diagonal, off_diag below it, written out of place so torch.func can trace it."""
        latent = self.log_diag.shape[-1]
        rows, cols = self.tril_index
        strict = self.off_diag.new_zeros(*self.off_diag.shape[:-1], latent * latent)
        strict = strict.index_add(-1, rows * latent + cols, self.off_diag).unflatten(-1, (latent, latent))
        return strict + torch.diag_embed(self.log_diag.exp())

    def forward(self, x: torch.Tensor) -> SharedCholeskyGaussian:
        return SharedCholeskyGaussian(self.mean(self.standardise(x)), self.scale_tril())


class BernoulliLikelihood(nn.Module):
    """p(x | z) = prod_j Bernoulli(x_j; sigmoid(logit_j)); x in [0, 1] (grey levels allowed, as BCE)."""

    @torch.no_grad()
    def init_from_data_(self, data: Moments) -> torch.Tensor:
        """Output bias that makes the decoder start at the data's marginal means: their logits."""
        return torch.logit(data.mean.clamp(1e-3, 1 - 1e-3))

    ceiling = "sum of the pixels' binary entropies"

    def log_prob_ceiling(self, x: torch.Tensor) -> torch.Tensor | None:
        """sup over the logits of log p(x | z), per example: -sum_j H_b(x_j), the binary entropies of the values
        (0 for binary data); None where a value lies outside [0, 1] (then the likelihood is unbounded)."""
        if x.min() < 0 or x.max() > 1:
            return None
        return (torch.xlogy(x, x) + torch.xlogy(1 - x, 1 - x)).sum(-1)

    def log_prob(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # x l - softplus(l): the negated binary cross-entropy with logits, in three elementwise kernels.
        return (x * logits - F.softplus(logits)).sum(-1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """E[x | z] from the decoder's output: each pixel's probability, sigmoid(logit), in [0, 1]."""
        return torch.sigmoid(logits)


class GaussianLikelihood(nn.Module):
    """p(x | z) = N(x; G(z), c^2 I), with c fixed or learned (stored as log c)."""

    stacks_replicas = True

    def __init__(self, std: float | None = None, learn: bool = False) -> None:
        super().__init__()
        self._std_from_data = std is None and learn
        log_std = torch.tensor(math.log(1.0 if std is None else std))
        if learn:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    @torch.no_grad()
    def init_from_data_(self, data: Moments) -> torch.Tensor:
        """Output bias = the data mean; a learned c with no given start value starts at the pooled
        feature standard deviation (the maximum-likelihood c when W = 0)."""
        if self._std_from_data:
            self.log_std.fill_(0.5 * data.var.mean().clamp_min(1e-12).log().item())
        return data.mean

    @property
    def variance(self) -> torch.Tensor:
        return (2.0 * self.log_std).exp()

    @property
    def ceiling(self) -> str:
        return f"Gaussian density at its mode, (D/2) log(2 pi c^2) with c = {self.log_std.exp().min().item():.4g}"

    def log_prob_ceiling(self, x: torch.Tensor) -> torch.Tensor | None:
        """sup over the mean of log p(x | z), per example: -(D/2) log(2 pi c^2) for a fixed c (the smallest c of
        stacked replicas, so that it bounds each); None for a learned c, under which the density is unbounded."""
        if isinstance(self.log_std, nn.Parameter):
            return None
        log_std = self.log_std.min()
        return torch.full(x.shape[:-1], -0.5 * x.shape[-1] * (LOG_2PI + 2.0 * log_std.item()), dtype=x.dtype,
                          device=x.device)

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        sq = (x - mean).square().sum(-1)
        log_std = per_replica(self.log_std, sq)
        return -0.5 * (sq / (2.0 * log_std).exp() + dim * (LOG_2PI + 2.0 * log_std))

    def mean(self, decoded: torch.Tensor) -> torch.Tensor:
        """E[x | z] from the decoder's output, which is that mean already."""
        return decoded


class VAE(nn.Module):
    """Encoder, decoder network and likelihood; z has ``latent_dim`` coordinates."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, likelihood: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> DiagonalGaussian | SharedCholeskyGaussian:
        """The approximate posterior q_phi(z | x) of a batch x (B, D)."""
        return self.encoder(x)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p_theta(x | z) for x (B, D) and samples z (K, B, latent_dim); returns shape (K, B)."""
        return self.likelihood.log_prob(x.unsqueeze(-3), self.decoder(z).to(x.dtype))

    def exact_log_prob(self, x: torch.Tensor) -> torch.Tensor | None:
        """Exact log p_theta(x) per example where the model admits it in closed form, else None."""
        return None

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw new data from the model: z ~ N(0, I) decoded to the likelihood's mean E[x | z].

        Args:
            n: How many examples to draw.
            generator: Source of the latent draws, for repeatable samples; torch's global one by default. It
                may live on the host while the model is on an accelerator.

        Returns:
            A tensor (n, D) on the model's device: pixel probabilities in [0, 1] under a Bernoulli likelihood,
            the Gaussian decoder's mean otherwise.
        """
        weight = next(self.decoder.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator,
                        device=weight.device if generator is None else generator.device, dtype=weight.dtype)
        return self.likelihood.mean(self.decoder(z.to(weight.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode each example at its encoder mean: the likelihood's mean E[x | z = mean of q(z | x)].

        Args:
            x: A batch (B, D), as floats or as uint8 pixels (read as value / 255).

        Returns:
            A tensor (B, D) on the model's device, without gradient.
        """
        weight = next(self.decoder.parameters())
        z = self.encode(as_float(x).to(weight.device, weight.dtype)).mean
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def init_from_data_(self, x: torch.Tensor) -> None:
        """Data-dependent start: the decoder's output bias at the data's marginal (mean or logit-mean),
        so optimisation spends no steps finding the data's location. ``x`` as stored (uint8 pixels or floats)."""
        data = moments(x)
        self.decoder.out.bias.copy_(self.likelihood.init_from_data_(data))
        self.encoder.input_shift.copy_(data.mean)
        self.encoder.input_scale.copy_(data.std.clamp_min(1e-3))


class Decoder(nn.Module):
    """z -> decoder mean (Gaussian; soft-clipped for smooth networks) or logits (Bernoulli)."""

    def __init__(self, latent_dim: int, data_dim: int, spec: NetworkSpec, likelihood: str) -> None:
        super().__init__()
        self.body, self.out = build_decoder_layers(latent_dim, data_dim, spec)
        self.clip = spec.head_clip(MEAN_HEAD_RANGE) if likelihood == "gaussian" else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.clip(self.out(self.body(z)))

"""Variational families q_phi(w) for T independent replicas at once: every parameter carries a leading
replica dimension, so that summing the replicas' losses keeps each replica's gradient its own and one
elementwise torch.optim optimizer is T independent optimizers (as for the VAEs, ``engine/ensemble.py``).

Each family is a reparameterisation w = T_phi(eps), eps ~ N(0, I): :meth:`Family.rsample` maps noise
(T, S, dim) to samples (T, S, dim) and their log-density log q_phi(w) (T, S), computed along the map (a flow
need not be invertible in closed form). The replica count is read off the parameters, so the same module
evaluated (``torch.func.functional_call``) on one replica's slice is that replica alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .targets import DTYPE


def _standard_normal_log_prob(eps: Tensor) -> Tensor:
    return -0.5 * (eps.square().sum(-1) + eps.shape[-1] * math.log(2 * math.pi))


class Family(nn.Module):
    """A reparameterised variational family over R^dim, for T replicas."""

    def rsample(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Samples w (T, S, dim) from noise eps (T, S, dim), and log q_phi(w) (T, S)."""
        raise NotImplementedError

    def forward(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        return self.rsample(eps)


class Gaussian(Family):
    """N(loc, C C^T) for a Cholesky factor C that each Gaussian family parameterises its own way."""

    def __init__(self, replicas: int, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(replicas, dim, dtype=DTYPE))

    def scale_tril(self) -> Tensor:
        """Cholesky factor C of the covariance (T, dim, dim)."""
        raise NotImplementedError

    def covariance(self) -> Tensor:
        """C C^T (T, dim, dim)."""
        scale = self.scale_tril()
        return scale @ scale.transpose(-1, -2)


class MeanField(Gaussian):
    """N(loc, diag(exp(2 log_scale))): the location-scale family with independent coordinates."""

    def __init__(self, replicas: int, dim: int) -> None:
        super().__init__(replicas, dim)
        self.log_scale = nn.Parameter(torch.zeros(replicas, dim, dtype=DTYPE))

    def scale_tril(self) -> Tensor:
        return torch.diag_embed(self.log_scale.exp())

    def rsample(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        w = self.loc.unsqueeze(1) + self.log_scale.exp().unsqueeze(1) * eps
        return w, _standard_normal_log_prob(eps) - self.log_scale.sum(-1, keepdim=True)


class FullRank(Gaussian):
    """N(loc, C C^T) with C lower triangular: its strictly lower part free, its diagonal exp(log_diag) > 0."""

    def __init__(self, replicas: int, dim: int) -> None:
        super().__init__(replicas, dim)
        self.log_diag = nn.Parameter(torch.zeros(replicas, dim, dtype=DTYPE))
        self.off_diag = nn.Parameter(torch.zeros(replicas, dim, dim, dtype=DTYPE))

    def scale_tril(self) -> Tensor:
        return self.off_diag.tril(-1) + torch.diag_embed(self.log_diag.exp())

    def rsample(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        w = self.loc.unsqueeze(1) + eps @ self.scale_tril().transpose(-1, -2)
        return w, _standard_normal_log_prob(eps) - self.log_diag.sum(-1, keepdim=True)


class PlanarFlow(Family):
    """A mean-field Gaussian base pushed through ``layers`` planar maps f(z) = z + u' tanh(v . z + b)
    (Rezende & Mohamed, 2015): a non-linear family whose density is not location-scale. u' is u moved along v
    until v . u' >= -1, which keeps each map invertible; log |det df/dz| = log |1 + u' . v tanh'(v . z + b)|."""

    def __init__(self, replicas: int, dim: int, layers: int = 4, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = MeanField(replicas, dim)
        init = 0.1 / math.sqrt(dim)  # near the identity, but off the saddle u = v = 0
        self.u = nn.Parameter(init * torch.randn(replicas, layers, dim, generator=generator, dtype=DTYPE))
        self.v = nn.Parameter(init * torch.randn(replicas, layers, dim, generator=generator, dtype=DTYPE))
        self.b = nn.Parameter(torch.zeros(replicas, layers, dtype=DTYPE))

    def rsample(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        z, log_q = self.base.rsample(eps)
        uv = (self.u * self.v).sum(-1, keepdim=True)
        u = self.u + (nn.functional.softplus(uv) - 1 - uv) * self.v / self.v.square().sum(-1, keepdim=True)
        for k in range(self.u.shape[1]):
            u_k, v_k, b_k = u[:, k].unsqueeze(1), self.v[:, k].unsqueeze(1), self.b[:, k].unsqueeze(1)
            activation = torch.tanh((z * v_k).sum(-1) + b_k)  # (T, S)
            log_q = log_q - torch.log1p((u_k * v_k).sum(-1) * (1 - activation.square()))  # > -1 by u'
            z = z + u_k * activation.unsqueeze(-1)
        return z, log_q


FAMILIES = ("mean-field", "full-rank", "planar-flow")


def build_family(name: str, seeds: tuple[int, ...], dim: int, flow_layers: int = 4) -> Family:
    """The family ``name`` for one replica per seed: Gaussians start at N(0, I); a flow's random maps of replica
    t come from ``torch.Generator().manual_seed(seeds[t])``, so replica t starts the same alone or beside others."""
    if name == "mean-field":
        return MeanField(len(seeds), dim)
    if name == "full-rank":
        return FullRank(len(seeds), dim)
    if name == "planar-flow":
        flows = [PlanarFlow(1, dim, flow_layers, torch.Generator().manual_seed(seed)) for seed in seeds]
        family = PlanarFlow(len(seeds), dim, flow_layers)
        with torch.no_grad():
            for name_, param in family.named_parameters():
                param.copy_(torch.cat([dict(flow.named_parameters())[name_] for flow in flows]))
        return family
    raise ValueError(f"unknown family {name!r}")

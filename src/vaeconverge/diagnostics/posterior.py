"""How much of the latent space a VAE's encoder uses: the mean KL to the prior and the active units.

A collapsed posterior (q(z | x) = p(z) for every x) is a stationary point the theorems do not tell apart from
any other: its gradient can be near zero while the model has learnt nothing, so readings of such runs are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.storage import as_float
from ..runtime import to_device

# A latent dimension u is active when the posterior mean E_q[z_u | x] varies across the data with variance above
# this (Burda, Grosse & Salakhutdinov 2016, section 5.2).
ACTIVE_UNIT_VARIANCE = 1e-2
# Below this mean KL(q(z | x) || p(z)) per example, in nats, the encoder carries essentially no information about
# x: the run is read as collapsed.
COLLAPSED_KL = 0.1


@dataclass(frozen=True)
class PosteriorUsage:
    """``kl``: mean over the data of KL(q(z | x) || p(z)), in nats; ``active_units``: the latent dimensions whose
    posterior mean has variance over the data above :data:`ACTIVE_UNIT_VARIANCE`."""

    kl: float
    active_units: int

    @property
    def collapsed(self) -> bool:
        return self.kl < COLLAPSED_KL


@torch.no_grad()
def posterior_usage(model: torch.nn.Module, x: torch.Tensor, chunk_size: int = 2048, replicas: int | None = None,
                    device: torch.device | None = None) -> list[PosteriorUsage]:
    """The encoder of ``model`` (one with ``encode(x)`` giving a posterior with ``mean`` and ``kl_to_prior()``) over
    all of ``x``, a chunk at a time; exact, no Monte Carlo. ``replicas``: the model holds that many replicas'
    parameters stacked (``engine.ensemble``), each evaluated on all of ``x`` in one pass; one usage per replica
    (one for a plain model). ``device``: the model's (by default that of its parameters)."""
    device = device or next(model.parameters()).device
    kl: torch.Tensor | float = 0.0
    means = []
    for chunk in (as_float(to_device(rows, device)) for rows in x.split(chunk_size)):
        q = model.encode(chunk if replicas is None else chunk.expand(replicas, *chunk.shape))
        kl = kl + q.kl_to_prior().double().sum(-1)  # a chunk's activations are freed once its posterior is read
        means.append(q.mean.double())
    variance = torch.cat(means, dim=-2).var(-2, correction=0)
    kls, active = (kl / len(x)).reshape(-1).tolist(), (variance > ACTIVE_UNIT_VARIANCE).sum(-1).reshape(-1).tolist()
    return [PosteriorUsage(kl=k, active_units=int(a)) for k, a in zip(kls, active, strict=True)]

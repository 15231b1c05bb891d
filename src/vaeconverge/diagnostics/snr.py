"""Gradient signal-to-noise ratio of one group of parameters, from repeated stochastic gradients at fixed
parameters (docs/theory.md section 6; Rainforth et al. 2018, "Tighter variational bounds are not necessarily better").

Given M independent draws g_1..g_M of a minibatch gradient restricted to a group of P coordinates (each draw with a
fresh minibatch and fresh Monte Carlo noise), two readings of SNR = |signal| / noise:

- ``coord``, Rainforth et al.'s: the mean over the group's coordinates of |E g_i| / std(g_i);
- ``norm``: ||E g|| / sqrt(E ||g - E g||^2), the whole group's mean against its total spread.

Both come with a delete-one jackknife standard error over the M draws (:func:`gradient_snr` says how each is
estimated and what bias remains). :func:`vae_gradient_draws` gives a VAE's draws, split into the encoder's
parameters (phi) and the generative model's (theta: the decoder and the likelihood's own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.storage import as_float
from ..models.vae import VAE
from ..objectives import Objective, draw_noise
from ..runtime import to_device
from ..validation import MIN_SNR_DRAWS

# Coordinates processed at once in float64 (M x CHUNK entries): bounds the memory of groups with millions of them.
CHUNK = 1 << 16
# A (leave-one-out) variance at or below this fraction of the coordinate's mean square counts as zero: rounding.
_ZERO_VARIANCE = 1e-12


@dataclass(frozen=True)
class SNREstimate:
    """A group's gradient SNR from ``draws`` draws: ``coord`` (mean over coordinates of |mean| / std) and ``norm``
    (||mean|| / root of the total variance), each with its jackknife standard error; ``coordinates`` is how many
    coordinates entered ``coord`` (those whose gradient varies; see :func:`gradient_snr`)."""

    coord: float
    coord_se: float
    norm: float
    norm_se: float
    draws: int
    coordinates: int


def gradient_snr(draws: Tensor) -> SNREstimate:
    """The SNR of the gradients ``draws`` (M, P): M >= :data:`~vaeconverge.validation.MIN_SNR_DRAWS` (3)
    independent draws of one group's P coordinates.

    ``coord``: Rainforth et al.'s definition applied to the draws, the mean over coordinates of |mean_i| / s_i (s_i
    the sample standard deviation, ddof 1). It is biased upward, in two ways: |mean_i| folds the noise of mean_i
    onto the positive side, so that a coordinate whose mean is within a few std_i / sqrt(M) of zero reads high (one
    of zero mean reads sqrt(2 / pi) / sqrt(M), 0.14 at M = 32, which is what a group of pure noise reads); and
    E[1 / s_i] > 1 / std_i, by about 3 / (4 M) relative for Gaussian draws, more for heavier tails. Gradient
    coordinates with a tiny spread (a weight few minibatches reach) give heavy-tailed ratios, which a jackknife
    bias correction turned negative on real VAEs, so none is applied: the bias is stated instead. Coordinates
    whose draws are all equal once any one draw is left out have no ratio to estimate and are left out of the mean;
    ``coordinates`` counts the rest (NaN readings if none remain).

    ``norm``: ||E g||^2 is estimated without bias by ||mean||^2 - tr(S) / M (the mean over pairs of distinct draws
    of <g_j, g_k>, which is also the jackknife's correction of ||mean||^2), E ||g - E g||^2 without bias by tr(S)
    (S the sample covariance, ddof 1); ``norm`` is the root of their ratio, clamped at 0 (reads 0 when the mean is
    lost in the noise). It has no 1 / sqrt(M) floor (the plug-in ||mean|| / sqrt(tr S) would read at least about
    1 / sqrt(M)); the ratio and the root leave an O(1/M) bias.

    Standard errors: the delete-one jackknife over the M draws, sqrt((M - 1) / M sum_j (theta_(-j) -
    mean theta_(-))^2), which accounts for the correlation between coordinates; computed in closed form from the
    draws' sums, in float64, :data:`CHUNK` coordinates at a time.
    """
    if draws.dim() != 2:
        raise ValueError(f"draws must have shape (M, P), got {tuple(draws.shape)}")
    m = draws.shape[0]
    if m < MIN_SNR_DRAWS:
        raise ValueError(f"the jackknife needs at least {MIN_SNR_DRAWS} draws, got {m}")
    ratio_sum = torch.zeros((), dtype=torch.float64)  # sum over kept coordinates of |mean| / s
    ratio_loo = torch.zeros(m, dtype=torch.float64)  # the same with draw j left out
    mean_sq, mean_sq_loo = torch.zeros((), dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    trace, trace_loo = torch.zeros((), dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    kept = 0
    for chunk in draws.split(CHUNK, dim=1):
        g = chunk.detach().to("cpu", torch.float64)
        mean = g.mean(0)
        centred = g - mean
        squares = centred.square()
        total = squares.sum(0)  # (P,) sum of squared deviations
        variance = total / (m - 1)
        mean_loo = mean - centred / (m - 1)  # (M, P): the mean without draw j
        variance_loo = ((total - squares * (m / (m - 1))) / (m - 2)).clamp_min(0.0)
        scale = _ZERO_VARIANCE * (g.square().mean(0) + torch.finfo(torch.float64).tiny)
        keep = (variance_loo > scale).all(0)
        ratio_sum += (mean.abs() / variance.sqrt())[keep].sum()
        ratio_loo += (mean_loo.abs()[:, keep] / variance_loo[:, keep].sqrt()).sum(1)
        kept += int(keep.sum())
        mean_sq += mean.square().sum()
        mean_sq_loo += mean_loo.square().sum(1)
        trace += variance.sum()
        trace_loo += variance_loo.sum(1)
    norm = _norm_ratio(mean_sq, trace, m)
    norm_loo = _norm_ratio(mean_sq_loo, trace_loo, m - 1)
    return SNREstimate(coord=(ratio_sum / kept).item(), coord_se=_jackknife_se(ratio_loo / kept),
                       norm=norm.item(), norm_se=_jackknife_se(norm_loo), draws=m, coordinates=kept)


def _norm_ratio(mean_sq: Tensor, trace: Tensor, m: int) -> Tensor:
    """sqrt(max(||mean||^2 - tr S / m, 0) / tr S): the norm SNR of ``m`` draws from their sums (NaN for tr S = 0)."""
    return ((mean_sq - trace / m).clamp_min(0.0) / trace).sqrt()


def _jackknife_se(left_out: Tensor) -> float:
    """The delete-one jackknife standard error from the M leave-one-out values."""
    m = len(left_out)
    return math.sqrt((m - 1) / m * (left_out - left_out.mean()).square().sum().item())


def vae_gradient_draws(model: VAE, objective: Objective, x: Tensor, batch_size: int, draws: int,
                       generator: torch.Generator) -> dict[str, Tensor]:
    """``draws`` gradients of the training loss -mean_i surrogate(x_i) on minibatches of ``batch_size`` rows of ``x``,
    each draw a fresh minibatch (``randperm``) and then fresh noise, both from ``generator`` (on the host), as
    {"encoder": (draws, its parameters), "decoder": (draws, the rest)}. The model is not modified."""
    params = [p for p in model.parameters() if p.requires_grad]
    encoder = {id(p) for p in model.encoder.parameters()}
    groups = ["encoder" if id(p) in encoder else "decoder" for p in params]
    rows: dict[str, list[Tensor]] = {group: [] for group in dict.fromkeys(groups)}
    device = params[0].device
    for _ in range(draws):
        batch = as_float(to_device(x[torch.randperm(len(x), generator=generator)[:batch_size]], device))
        eps = draw_noise(objective.samples, len(batch), model.latent_dim, generator, batch.dtype).to(device)
        loss = -objective.surrogate(model, batch, eps).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
        for group, own in rows.items():
            own.append(torch.cat([g.reshape(-1) for g, of in zip(grads, groups, strict=True) if of == group]))
    return {group: torch.stack(own) for group, own in rows.items()}

"""Gradient norms: the full-objective gradient (what the theorems bound) and minibatch gradients.

The minibatch norms are accumulated on the device and read only at logging intervals, so the hot loop
never waits on the host once per parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..models.vae import VAE
from ..objectives import Objective, draw_noise


def squared_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of squared entries over all tensors, as one 0-d tensor (fused foreach kernels, no sync)."""
    return torch.nn.utils.get_total_norm(list(tensors), norm_type=2.0).square()


@dataclass(frozen=True)
class FullGradient:
    """Full objective (average negative objective per example) and its gradient's squared norm."""

    objective: float
    grad_sq_norm: float


def full_objective_gradient(
    model: VAE,
    objective: Objective,
    x: torch.Tensor,
    eval_samples: int,
    generator: torch.Generator,
    chunk_size: int = 2048,
) -> FullGradient:
    """Gradient of L(theta) = -(1/N) sum_i objective(x_i) over *all* N examples, averaged over
    ``eval_samples`` independent Monte Carlo draws of the objective's K-sample noise.

    Uses ``torch.autograd.grad``, so the parameters' ``.grad`` fields are left untouched. The squared
    norm of a Monte Carlo gradient overestimates the exact one by its variance / eval_samples.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    value = torch.zeros((), dtype=x.dtype)
    scale = 1.0 / (len(x) * eval_samples)
    for _ in range(eval_samples):
        for chunk in x.split(chunk_size):
            eps = draw_noise(objective.samples, len(chunk), model.latent_dim, generator, x.dtype)
            loss = -objective(model, chunk, eps).sum() * scale
            torch._foreach_add_(total, torch.autograd.grad(loss, params))
            value += loss.detach()
    return FullGradient(objective=value.item(), grad_sq_norm=squared_norm(total).item())


class GradientNormTracker:
    """Minibatch gradient squared norms: their mean over a logging window, and the paper's epoch proxy.

    The paper's proxy (THEORY.md section 5) is, per epoch, sum over batches of ||grad of the batch-*summed*
    loss||^2 divided by (N x number of parameters). Gradient noise inflates it: it is not the
    full-gradient norm.
    """

    def __init__(self, n_examples: int, n_parameters: int, batch_size: int) -> None:
        self._proxy_scale = batch_size**2 / (n_examples * n_parameters)
        self._window_sum = torch.zeros(())
        self._window_count = 0
        self._epoch_sum = torch.zeros(())
        self._proxy: torch.Tensor | None = None

    def observe(self, grads: Iterable[torch.Tensor]) -> None:
        """Record one minibatch gradient (of the batch-mean loss)."""
        sq = squared_norm(grads)
        self._window_sum += sq
        self._epoch_sum += sq
        self._window_count += 1

    def end_epoch(self) -> None:
        """Close an epoch: its sum becomes the current proxy value."""
        self._proxy = self._epoch_sum * self._proxy_scale
        self._epoch_sum = torch.zeros(())

    def read_window(self) -> float:
        """Mean minibatch squared norm since the last read (NaN if no step was taken); resets the window."""
        mean = (self._window_sum / self._window_count).item() if self._window_count else float("nan")
        self._window_sum = torch.zeros(())
        self._window_count = 0
        return mean

    @property
    def paper_proxy(self) -> float:
        """The last completed epoch's proxy value (NaN before the first epoch ends)."""
        return float("nan") if self._proxy is None else self._proxy.item()

"""Gradient norms: the full-objective gradient (what the theorems bound) and minibatch gradients.

The minibatch norms are accumulated on the device and read only at logging intervals, so the hot loop
never waits on the host once per parameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..data.storage import as_float
from ..objectives import Objective, draw_noise
from ..runtime import to_device
from .squared_norm import unbiased_squared_norm


class Replicas(Protocol):
    """T replicas of a model evaluated together (``engine.ensemble.Ensemble``): what a full-data gradient needs."""

    objective: Objective
    latent_dim: int
    device: torch.device

    def chunk_gradients(self, chunks: Sequence[torch.Tensor], eps: Sequence[torch.Tensor], scale: float
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]: ...


# Each replicate of the full gradient is summed over this many groups of examples, whose differences between
# the replicates give the standard error of the squared norm (diagnostics/squared_norm.py).
EVAL_GROUPS = 8


@dataclass(frozen=True)
class FullGradient:
    """Per replica: the full objective (average negative objective per example, over both replicates) with its
    Monte Carlo standard error ``objective_se``, and the squared norm of its gradient: ``grad_sq_norm``
    unbiased, its standard error ``grad_sq_norm_se``, and ``grad_sq_norm_biased``, the squared norm of one
    replicate (what a single evaluation reports)."""

    objective: list[float]
    objective_se: list[float]
    grad_sq_norm: list[float]
    grad_sq_norm_se: list[float]
    grad_sq_norm_biased: list[float]


def full_objective_gradient(
    replicas: Replicas,
    x: torch.Tensor,
    eval_samples: int,
    generators: Sequence[torch.Generator],
    chunk_size: int = 2048,
) -> FullGradient:
    """||grad L(theta)||^2 for L(theta) = -(1/N) sum_i objective(x_i) over *all* N examples, for every replica,
    estimated without bias from two independent replicates of the Monte Carlo gradient, each averaging
    ``eval_samples`` draws of the objective's K-sample noise per example.

    The data are split into chunks (see :func:`evaluation_chunks`), each chunk's gradient going to its group, so
    the cost is two passes of ``eval_samples`` draws over the data. Replica t draws its noise from
    ``generators[t]`` alone, so its value does not depend on the others. The objective's standard error comes
    from the groups' differences between the replicates, d_g: each replicate's group values are independent
    with equal variance, so Var(objective) = sum_g Var(d_g) / 4, estimated by sum_g d_g^2 / 4. Uses
    ``torch.autograd.grad``: the parameters' ``.grad`` fields are left untouched. ``x`` as stored (on the host,
    uint8 pixels): each chunk goes to the replicas' device and is converted there; the noise is drawn on the
    generators' device and moved to the replicas'.
    """
    scale = 1.0 / (len(x) * eval_samples)
    samples = replicas.objective.samples
    terms, values = [], []
    for _ in range(2):
        groups: list[torch.Tensor] = []
        group_values: list[torch.Tensor] = []
        for _ in range(eval_samples):
            batch: list[tuple[int, torch.Tensor, torch.Tensor]] = []
            for c, chunk in evaluation_chunks(x, chunk_size):
                chunk = as_float(to_device(chunk, replicas.device))
                eps = torch.stack([draw_noise(samples, len(chunk), replicas.latent_dim, g, chunk.dtype)
                                   for g in generators]).to(replicas.device)
                batch.append((c, chunk, eps))
                if sum(len(b) for _, b, _ in batch) >= chunk_size:  # at most about chunk_size examples per pass
                    _accumulate(replicas, batch, scale, groups, group_values)
            if batch:
                _accumulate(replicas, batch, scale, groups, group_values)
        terms.append(torch.stack(groups))
        values.append(torch.stack(group_values))  # (groups, T)
    estimate = unbiased_squared_norm(*terms)
    objective = (values[0] + values[1]).sum(0) / 2
    objective_se = (values[0] - values[1]).square().sum(0).sqrt() / 2
    return FullGradient(objective=objective.tolist(), objective_se=objective_se.tolist(),
                        grad_sq_norm=estimate.value.tolist(),
                        grad_sq_norm_se=estimate.se.tolist(), grad_sq_norm_biased=estimate.biased.tolist())


def _accumulate(replicas: Replicas, batch: list[tuple[int, torch.Tensor, torch.Tensor]], scale: float,
                groups: list[torch.Tensor], group_values: list[torch.Tensor]) -> None:
    """Evaluate the chunks of ``batch`` together, add each one's gradient and loss (T,) to its group, empty the
    batch."""
    losses, grads = replicas.chunk_gradients([chunk for _, chunk, _ in batch], [eps for _, _, eps in batch],
                                             scale)
    for (c, _, _), loss, grad in zip(batch, losses, grads, strict=True):
        add_to_group(groups, c, grad)
        add_to_group(group_values, c, loss.double())
    batch.clear()


def evaluation_chunks(data: torch.Tensor, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """The chunks of a full-data evaluation with their groups: ``data`` split into chunks of at most
    ``chunk_size`` examples, and small enough that there are :data:`EVAL_GROUPS` of them where there are as many
    examples, chunk j going to group j mod :data:`EVAL_GROUPS`."""
    size = max(min(chunk_size, -(-len(data) // EVAL_GROUPS)), 1)
    return ((j % EVAL_GROUPS, chunk) for j, chunk in enumerate(data.split(size)))


def add_to_group(groups: list[torch.Tensor], group: int, term: torch.Tensor) -> None:
    """Accumulate ``term`` into ``groups[group]``, opening the group where it is the next one (in place)."""
    if group == len(groups):
        groups.append(term)
    else:
        groups[group] += term


def replica_squared_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared Euclidean norm of each replica's gradient, shape (T,), from stacked gradients (T, ...)."""
    # vector_norm reduces in one pass; a dot product would first write the squares out (a third slower here)
    return torch.stack([torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1) for g in grads]).square().sum(0)


class GradientNormTracker:
    """Minibatch gradient squared norms of T replicas: their mean over a logging window, and the paper's
    epoch proxy, each as a (T,) tensor kept on the device until read.

    The paper's proxy (docs/theory.md section 5) is, per epoch, sum over batches of ||grad of the batch-*summed*
    loss||^2 divided by (N x number of parameters). Gradient noise inflates it: it is not the
    full-gradient norm.
    """

    def __init__(self, replicas: int, n_examples: int, n_parameters: int, batch_size: int,
                 device: torch.device | str | None = None) -> None:
        self._proxy_scale = batch_size**2 / (n_examples * n_parameters)
        self._zeros = torch.zeros(replicas, device=device)
        self._window_sum = self._epoch_sum = self._zeros
        self._window_count = 0
        self._proxy: torch.Tensor | None = None

    def observe(self, squared_norms: torch.Tensor) -> None:
        """Record one step's minibatch gradient squared norms (of the batch-mean loss), one per replica."""
        self._window_sum = self._window_sum + squared_norms
        self._epoch_sum = self._epoch_sum + squared_norms
        self._window_count += 1

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        """The current epoch's running sum and the last epoch's proxy (on the host), to resume from a step at which
        the logging window was read (so it is empty)."""
        return {"epoch_sum": self._epoch_sum.cpu(), "proxy": None if self._proxy is None else self._proxy.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        """Go on from a :meth:`state_dict`, on this tracker's device."""
        device = self._zeros.device
        self._epoch_sum = state["epoch_sum"].to(device)
        self._proxy = None if state["proxy"] is None else state["proxy"].to(device)

    def end_epoch(self) -> None:
        """Close an epoch: its sum becomes the current proxy value."""
        self._proxy = self._epoch_sum * self._proxy_scale
        self._epoch_sum = self._zeros

    def read_window(self) -> list[float]:
        """Mean minibatch squared norm per replica since the last read (NaN if no step was taken); resets."""
        if not self._window_count:
            return [float("nan")] * len(self._zeros)
        mean = (self._window_sum / self._window_count).tolist()
        self._window_sum, self._window_count = self._zeros, 0
        return mean

    @property
    def paper_proxy(self) -> list[float]:
        """The last completed epoch's proxy value per replica (NaN before the first epoch ends)."""
        return [float("nan")] * len(self._zeros) if self._proxy is None else self._proxy.tolist()

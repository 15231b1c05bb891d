"""One BBVI run of T replicas in a single pass, measured as ``vaeconverge train`` measures a VAE: the
full-objective gradient at checkpoints, the random iterate, the rate, the constants and the bound.

The full objective is the negative ELBO (or importance-weighted bound) over *all* data, estimated with
two independent replicates of ``eval_samples`` Monte Carlo groups of K samples from the diagnostics' own seeded
stream (their gradients' inner product is the unbiased squared norm); it is a loss of the
whole posterior, not divided by N, so that it can be compared with the exact log evidence -log p(data).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..data import PermutationBatches
from ..diagnostics import replica_squared_norms, unbiased_squared_norm
from ..diagnostics.grad_norms import EVAL_GROUPS
from ..engine.checkpoint import save_checkpoint
from ..engine.loop import run_steps
from ..engine.recorder import ObjectiveFloor, Recorder, Subject, diagnostics_seed
from ..optim import build_optimizer, build_schedule
from ..runtime import computing, require_memory, resolve_device
from .config import BBVIConfig
from .families import Family, Gaussian, build_family
from .objectives import build_objective
from .targets import DTYPE, Target, build_target, on_device

CHECKPOINT_FORMAT = "vaeconverge-bbvi-checkpoint-1"
NOISE_ROWS = 64  # minibatches (each under two noise draws) per gradient-noise estimate
SMOOTHNESS_GROUPS = 16  # Monte Carlo groups of K samples in the objective whose Hessian gives L (each HVP costs)


@dataclass
class BBVIResult:
    """A finished (or interrupted) run: the trained family (all replicas), metrics rows and summary."""

    config: BBVIConfig
    target: Target
    family: Family
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    metrics: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def save_checkpoint(self, path: str | Path) -> None:
        """Save the family's parameters (all replicas) and the optimizer's state (``engine.checkpoint``)."""
        save_checkpoint(path, CHECKPOINT_FORMAT, self.config.to_dict(), self.summary["steps"],
                        self.config.replica_seeds, self.optimizer, self.scheduler, family=self.family.state_dict())


class _Loss(nn.Module):
    """The negative objective of every replica (T,), as a module so that ``functional_call`` can evaluate it
    on one replica's parameters."""

    def __init__(self, family: Family, target: Target, objective) -> None:
        super().__init__()
        self.family, self.target, self.objective = family, target, objective

    def forward(self, eps: Tensor, index: Tensor | None = None) -> Tensor:
        return -self.objective(self.family, self.target, eps, index)


def _noise(generator: torch.Generator, groups: int, samples: int, dim: int) -> Tensor:
    """Standard normal draws (groups, K, dim) on the generator's device."""
    return torch.randn(groups, samples, dim, generator=generator, dtype=DTYPE, device=generator.device)


class _Replicas(Subject):
    """The replicas of a variational family as the recorder measures them. A row of gradient draws is one
    minibatch of B data (all of them without minibatching) under one draw of K samples of the parameters, which
    the whole minibatch shares: ``examples_per_row`` is B."""

    def __init__(self, loss: _Loss, config: BBVIConfig) -> None:
        self.loss, self.config = loss, config
        self.seeds, self.batch_size, self.samples = config.replica_seeds, config.batch_size, config.samples
        self.examples_per_row = config.batch_size
        self.params = list(loss.parameters())
        self.device = self.params[0].device  # the diagnostics draw on the host and move their draws here
        self.parameters = sum(p[0].numel() for p in self.params)
        self.dim, self.n = loss.target.dim, loss.target.n_data

    def _eval_noise(self, seed: int) -> Tensor:
        """The checkpoints' noise, (2, eval_samples, K, dim): two independent replicates of ``eval_samples``
        groups of K samples."""
        noise = _noise(torch.Generator().manual_seed(diagnostics_seed(seed)), 2 * self.config.eval_samples,
                       self.config.samples, self.dim)
        return noise.reshape(2, self.config.eval_samples, self.config.samples, self.dim).to(self.device)

    def measure(self) -> list[dict[str, float]]:
        """The full objective and the unbiased squared norm of its gradient (``diagnostics/squared_norm.py``):
        each replicate's noise groups split into :data:`EVAL_GROUPS` parts, one gradient each. The objective's
        standard error: the parts' contributions a_g, b_g of the two replicates are independent with equal
        variance, so Var(objective) = sum_g 2 Var(a_g) = sum_g Var(a_g - b_g), estimated by sum_g (a_g - b_g)^2."""
        eps = torch.stack([self._eval_noise(seed) for seed in self.seeds], dim=1)  # common random numbers
        groups = min(EVAL_GROUPS, self.config.eval_samples)
        terms, values = [], []
        for replicate in eps:
            parts, contributions = [], []
            for part in replicate.tensor_split(groups, dim=1):
                loss = self.loss(part) * (part.shape[1] / (2 * self.config.eval_samples))
                grads = torch.autograd.grad(loss.sum(), self.params)
                parts.append(torch.cat([g.reshape(len(self.seeds), -1) for g in grads], dim=1))
                contributions.append(loss.detach())
            values.append(torch.stack(contributions))
            terms.append(torch.stack(parts) * 2)  # each replicate on its own estimates the whole gradient
        estimate = unbiased_squared_norm(*terms)
        evidence = math.nan if self.loss.target.log_evidence is None else self.loss.target.log_evidence
        value, se_value = (values[0] + values[1]).sum(0), (values[0] - values[1]).norm(dim=0)
        return [{"objective": v, "objective_se": o, "grad_sq_norm": g, "grad_sq_norm_se": se, "grad_sq_norm_biased": b,
                 "log_likelihood": evidence}
                for v, o, g, se, b in zip(value.tolist(), se_value.tolist(), estimate.value.tolist(),
                                          estimate.se.tolist(),
                                       estimate.biased.tolist(), strict=True)]

    def _replica_loss(self, t: int) -> tuple[Callable[..., Tensor], dict[str, Tensor]]:
        params = {name: p[t:t + 1].detach() for name, p in self.loss.named_parameters()}

        def loss(p: dict[str, Tensor], eps: Tensor, index: Tensor | None = None) -> Tensor:
            return functional_call(self.loss, p, (eps.unsqueeze(0), index)).sum()

        return loss, params

    def fixed_noise_loss(self, t: int, generator: torch.Generator, seed: int
                         ) -> tuple[Callable[[dict[str, Tensor]], Tensor], dict[str, Tensor]]:
        """The full objective under the first groups of the checkpoints' own noise."""
        loss, params = self._replica_loss(t)
        eps = self._eval_noise(self.seeds[t])[0, :SMOOTHNESS_GROUPS]
        return (lambda p: loss(p, eps)), params

    def gradient_draws(self, t: int, generator: torch.Generator, seed: int) -> Tensor:
        return self._minibatch_gradients(t, generator, NOISE_ROWS, 2)

    def snr_gradients(self, t: int, generator: torch.Generator, seed: int, draws: int) -> dict[str, Tensor]:
        """The variational parameters' training-loss gradients as the "encoder" group (BBVI has no decoder)."""
        return {"encoder": self._minibatch_gradients(t, generator, draws, 1)[:, 0]}

    def _minibatch_gradients(self, t: int, generator: torch.Generator, rows: int, draws: int) -> Tensor:
        """Replica t's training-loss gradients, (rows, draws, P): ``rows`` minibatches of B data (all N without
        minibatching), each under ``draws`` independent draws of K samples; the minibatches first, then the noise,
        from ``generator``."""
        loss, params = self._replica_loss(t)
        index = None
        if self.batch_size < self.n:
            index = torch.stack([torch.randperm(self.n, generator=generator)[:self.batch_size]
                                 for _ in range(rows)]).to(self.device)
        eps = _noise(generator, rows * draws, self.samples, self.dim).reshape(rows, draws, 1, self.samples, self.dim)
        eps = eps.to(self.device)
        if index is None:
            over_draws = vmap(grad(loss), in_dims=(None, 0))
            grads = vmap(over_draws, in_dims=(None, 0))(params, eps)
        else:
            over_draws = vmap(grad(loss), in_dims=(None, 0, None))
            grads = vmap(over_draws, in_dims=(None, 0, 0))(params, eps, index.unsqueeze(1))
        return torch.cat([g.reshape(rows, draws, -1) for g in grads.values()], dim=2)

    def weights(self, t: int) -> list[Tensor]:
        return [p[t] for p in self.params]

    def objective_floor(self) -> ObjectiveFloor | None:
        """-log p(data) where the target knows it: -objective >= -log p(data) for the ELBO and the IWAE bound
        (a registered objective of another kind has no floor known here)."""
        evidence = self.loss.target.log_evidence
        if evidence is None or self.config.objective not in ("elbo", "iwae"):
            return None
        return ObjectiveFloor(-evidence, "exact log evidence")

def train(config: BBVIConfig, target: Target | None = None, progress: bool = True) -> BBVIResult:
    """Fit the configured family to ``target`` (default: the configured built-in), one replica per seed, all
    in a single pass; Ctrl-C stops early and still returns what was measured.

    Seeding: seed t fixes replica t's initial parameters and one generator for its batches and noise, so
    replica t is the run of seed t alone.
    """
    config.validate()
    target = target if target is not None else build_target(config.target)
    if config.batch_size is None:  # resolved, so that the summary and the bounds see the B that was used
        config = dataclasses.replace(config, batch_size=target.n_data)
    # Each variational draw is scored against the data: about four float32 tensors of (dim + N) per draw, with
    # the backward pass's. Refused before drawing when that cannot fit.
    draws = len(config.replica_seeds) * config.samples * (1 + 2 * config.eval_samples)
    device = resolve_device(config.device)
    require_memory("--samples", 16 * draws * (target.dim + target.n_data),
                   f"{draws:,} variational draws a step and a checkpoint (--samples x --eval-samples x seeds) "
                   f"against {target.n_data:,} data", device)
    with computing(config.threads or 1, config.denormals == "flush"):
        result = _fit(config, on_device(target, device), device, progress)
    result.summary["device"] = str(device)
    return result


def _fit(config: BBVIConfig, target: Target, device: torch.device, progress: bool) -> BBVIResult:
    seeds, n, batch_size = config.replica_seeds, target.n_data, config.batch_size
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the target's {n} data")
    family = build_family(config.family, seeds, target.dim, config.flow_layers).to(device)  # drawn on the host
    loss_of = _Loss(family, target, build_objective(config.objective))
    params = list(family.parameters())
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    # Batches come from the host's generators; on another device the noise is drawn there, by a generator of the
    # same seed, as a VAE run draws it.
    noise = generators if device.type == "cpu" else [torch.Generator(device).manual_seed(seed) for seed in seeds]
    batches = [PermutationBatches(torch.arange(n), batch_size, g) for g in generators]
    epochs = batches[0]
    optimizer = build_optimizer(config.optimizer, params, config.lr, config.momentum, config.adam_betas)
    scheduler = build_schedule(optimizer, config.schedule, config.schedule_power, epochs.batches_per_epoch)
    recorder = Recorder(_Replicas(loss_of, config), config.steps, n, eval_every=config.eval_every,
                        eval_points=config.eval_points, eval_samples=config.eval_samples, constants=config.constants,
                        snr_draws=config.snr_draws if config.snr else None, device=device)

    def batch_losses() -> Tensor:
        index = torch.stack([b.next_indices() for b in batches]).to(device) if batch_size < n else None
        eps = torch.stack([_noise(g, 1, config.samples, target.dim) for g in noise])
        return loss_of(eps, index)

    interrupted = run_steps(config.steps, batch_losses, params, optimizer, scheduler, recorder, epochs,
                            replica_squared_norms, "bbvi", progress)

    summary = recorder.summary(config.assessed(), config=config.to_dict(), interrupted=interrupted,
                               data={"name": target.name, "n": n, "dim": target.dim},
                               batches_per_epoch=epochs.batches_per_epoch)
    extras: dict[str, Any] = {"log_evidence": target.log_evidence, "posterior": _posterior_error(family, target)}
    if target.log_evidence is not None:  # the objective is -ELBO: its gap to -log p(data) is the KL to the posterior
        extras["evidence_gap"] = summary.assessment["objective"] + target.log_evidence
    return BBVIResult(config, target, family, optimizer, scheduler, recorder.metrics,
                      summary.with_extras(**extras).to_dict())


def _posterior_error(family: Family, target: Target) -> list[dict[str, float]] | None:
    """Per replica, relative errors of a Gaussian family's mean and covariance against the exact posterior
    (where the target has one and the family is Gaussian)."""
    exact_mean = getattr(target, "posterior_mean", None)
    if exact_mean is None or not isinstance(family, Gaussian):
        return None
    with torch.no_grad():
        covariance = family.covariance()
        exact_cov = target.posterior_covariance
        return [{"mean_error": (mean - exact_mean).norm().item() / exact_mean.norm().item(),
                 "covariance_error": (cov - exact_cov).norm().item() / exact_cov.norm().item()}
                for mean, cov in zip(family.loc, covariance, strict=True)]

"""One BBVI run of T replicas in a single pass, measured as ``vaeconverge train`` measures a VAE: the
full-objective gradient at checkpoints, the random iterate, the rate, the constants and the bound.

The full objective is the negative ELBO (or importance-weighted bound) over *all* data, estimated with
``eval_samples`` Monte Carlo groups of K samples from the diagnostics' own seeded stream; it is a loss of the
whole posterior, not divided by N, so that it can be compared with the exact log evidence -log p(data).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..data import PermutationBatches
from ..diagnostics import GradientNormTracker, hvp_power_iteration, replica_squared_norms
from ..engine.checkpoint import atomic_write
from ..engine.loop import checkpoint_rows, run_steps
from ..runtime import flush_denormals, intra_op_threads
from ..engine.train import DIAGNOSTICS_SEED_OFFSET, evaluation_steps
from ..optim import build_optimizer, build_schedule
from ..theory.assessment import Constants, assess_run
from .config import BBVIConfig
from .families import Family, Gaussian, build_family
from .objectives import build_objective
from .targets import DTYPE, Target, build_target

CHECKPOINT_FORMAT = "vaeconverge-bbvi-checkpoint-1"
NOISE_DRAWS = 64  # stochastic gradients per noise estimate
R_QUANTILE = 0.99
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


class _Loss(nn.Module):
    """The negative objective of every replica (T,), as a module so that ``functional_call`` can evaluate it
    on one replica's parameters."""

    def __init__(self, family: Family, target: Target, objective) -> None:
        super().__init__()
        self.family, self.target, self.objective = family, target, objective

    def forward(self, eps: Tensor, index: Tensor | None = None) -> Tensor:
        return -self.objective(self.family, self.target, eps, index)


def _noise(generator: torch.Generator, groups: int, samples: int, dim: int) -> Tensor:
    return torch.randn(groups, samples, dim, generator=generator, dtype=DTYPE)


class _Diagnostics:
    """Full-objective gradients of all replicas at a checkpoint, and the constants of one replica."""

    def __init__(self, loss: _Loss, config: BBVIConfig, batch_size: int) -> None:
        self.loss, self.config, self.batch_size = loss, config, batch_size
        self.params = list(loss.parameters())
        self.seeds = [seed + DIAGNOSTICS_SEED_OFFSET for seed in config.replica_seeds]
        self.dim = loss.target.dim

    def _eval_noise(self, seed: int) -> Tensor:
        return _noise(torch.Generator().manual_seed(seed), self.config.eval_samples, self.config.samples, self.dim)

    def __call__(self) -> list[dict[str, float]]:
        eps = torch.stack([self._eval_noise(seed) for seed in self.seeds])  # common random numbers
        value = self.loss(eps)
        grads = torch.autograd.grad(value.sum(), self.params)
        evidence = self.loss.target.log_evidence
        return [{"objective": v, "grad_sq_norm": g, "log_likelihood": math.nan if evidence is None else evidence}
                for v, g in zip(value.tolist(), replica_squared_norms(grads).tolist(), strict=True)]

    def probe(self, t: int, step: int) -> dict[str, float]:
        """L, the gradient noise at the run's (B, K) and at full data, R and the largest weight of replica t."""
        params = {name: p[t:t + 1].detach() for name, p in self.loss.named_parameters()}
        generator = torch.Generator().manual_seed(self.seeds[t] + 1 + step)

        def loss(p: dict[str, Tensor], eps: Tensor, index: Tensor | None = None) -> Tensor:
            return functional_call(self.loss, p, (eps.unsqueeze(0), index)).sum()

        eps = self._eval_noise(self.seeds[t])[:SMOOTHNESS_GROUPS]
        L = hvp_power_iteration(lambda p: loss(p, eps), params, generator=generator)
        n, k = self.loss.target.n_data, self.config.samples
        draws = torch.stack([_noise(generator, 1, k, self.dim) for _ in range(NOISE_DRAWS)])
        full = _flat(vmap(grad(loss), in_dims=(None, 0))(params, draws))
        minibatch = full
        if self.batch_size < n:
            index = torch.stack([torch.randperm(n, generator=generator)[:self.batch_size] for _ in range(NOISE_DRAWS)])
            batch_draws = torch.stack([_noise(generator, 1, k, self.dim) for _ in range(NOISE_DRAWS)])
            minibatch = _flat(vmap(grad(loss), in_dims=(None, 0, 0))(params, batch_draws, index.unsqueeze(1)))
        total, monte_carlo = _variance(minibatch), _variance(full)
        return {"L": L, "total": total, "monte_carlo": monte_carlo,
                "R": torch.quantile(minibatch.abs().amax(dim=1), R_QUANTILE).item(),
                "a": max(p.abs().max().item() for p in params.values())}


def _flat(grads: dict[str, Tensor]) -> Tensor:
    """Per-draw gradients (draws, parameters of one replica)."""
    return torch.cat([g.reshape(len(g), -1) for g in grads.values()], dim=1)


def _variance(draws: Tensor) -> float:
    """E ||g - E g||^2 from independent draws (rows), unbiased."""
    return (draws - draws.mean(0)).square().sum().item() / (len(draws) - 1)


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
    with intra_op_threads(config.threads or 1), flush_denormals(config.denormals == "flush"):
        return _fit(config, target, progress)


def _fit(config: BBVIConfig, target: Target, progress: bool) -> BBVIResult:
    seeds, n, batch_size = config.replica_seeds, target.n_data, config.batch_size
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the target's {n} data")
    family = build_family(config.family, seeds, target.dim, config.flow_layers)
    loss_of = _Loss(family, target, build_objective(config.objective))
    params = list(family.parameters())
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    batches = [PermutationBatches(torch.arange(n), batch_size, g) for g in generators]
    epochs = batches[0]
    optimizer = build_optimizer(config.optimizer, params, config.lr, config.momentum, config.adam_betas)
    scheduler = build_schedule(optimizer, config.schedule, config.schedule_power, epochs.batches_per_epoch)
    d = sum(p[0].numel() for p in params)
    tracker = GradientNormTracker(len(seeds), n, d, batch_size)
    diagnostics = _Diagnostics(loss_of, config, batch_size)
    eval_steps = evaluation_steps(config.steps, config.eval_every, config.eval_points)
    probe_steps = {0, config.steps // 2, config.steps} if config.constants else set()
    probes: list[dict[str, float]] = []
    result = BBVIResult(config, target, family, optimizer, scheduler)
    start = time.perf_counter()

    def record(step: int, lr: float) -> dict[str, float]:
        measured = diagnostics()
        rows = checkpoint_rows(measured, seeds, step, lr, max(epochs.epoch, 0), tracker, time.perf_counter() - start)
        if step in probe_steps:
            probes.extend(diagnostics.probe(t, step) for t in range(len(seeds)))
        result.metrics.extend(rows)
        return rows[-1]

    def batch_losses() -> Tensor:
        index = torch.stack([b.next_indices() for b in batches]) if batch_size < n else None
        eps = torch.stack([_noise(g, 1, config.samples, target.dim) for g in generators])
        return loss_of(eps, index)

    interrupted = run_steps(config.steps, batch_losses, params, optimizer, scheduler, tracker, epochs,
                            replica_squared_norms, eval_steps, record, "bbvi", progress)

    constants = _constants(result, probes, batch_size, d) if probes else None
    result.summary = {
        "config": config.to_dict(),
        "seeds": list(seeds),
        "steps": int(result.metrics[-1]["step"]),
        "seconds": time.perf_counter() - start,
        "interrupted": interrupted,
        "data": {"name": target.name, "n": n, "dim": target.dim},
        "parameters": d,
        "torch": torch.__version__,
        "log_evidence": target.log_evidence,
        "posterior": _posterior_error(family, target),
        "constants": None if constants is None else constants.to_dict(),
    }
    result.summary.update(assess_run(config, result.metrics, constants, epochs.batches_per_epoch))
    if result.summary["bound"] is not None:  # its (B, K) allocation assumes the VAE's noise model, not BBVI's
        result.summary["bound"].pop("best_allocation", None)
    if target.log_evidence is not None:  # the objective is -ELBO: its gap to -log p(data) is the KL to the posterior
        result.summary["evidence_gap"] = result.summary["objective"] + target.log_evidence
    return result


def _constants(result: BBVIResult, probes: list[dict[str, float]], batch_size: int, d: int) -> Constants:
    """The largest constants seen along the trajectory, over replicas.

    One draw of w serves a whole minibatch, so the Monte Carlo part of the noise falls as 1/K, not 1/(B K) as in
    a VAE: the two parts are stored in the VAE's form sigma2_x / B + sigma2_eps / (B K) *at the run's (B, K)*
    (sigma2_x = B x the minibatch part, sigma2_eps = B K x the Monte Carlo part), so that ``sigma2`` is the
    measured variance of the run's stochastic gradient.
    """
    config, metrics = result.config, result.metrics
    monte_carlo = max(p["monte_carlo"] for p in probes)
    data = max(max(p["total"] - p["monte_carlo"], 0.0) for p in probes)
    evidence = result.target.log_evidence
    if evidence is not None:  # -objective <= log p(data) for the ELBO and the IWAE bound alike
        best, reference = -evidence, "exact log evidence"
    else:
        best, reference = min(row["objective"] for row in metrics), "lowest objective measured"
    return Constants(
        L=max(p["L"] for p in probes),
        sigma2_x=batch_size * data,
        sigma2_eps=batch_size * config.samples * monte_carlo,
        R=max(p["R"] for p in probes),
        a=max(p["a"] for p in probes),
        delta=max(metrics[0]["objective"] - best, 0.0),
        d=d,
        batch_size=batch_size,
        samples=config.samples,
        delta_reference=reference,
    )


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


def write_bbvi_run(out_dir: str | Path, result: BBVIResult) -> Path:
    """Write metrics.csv, bands.csv, summary.json, convergence.png and checkpoint.pt into ``out_dir``."""
    from ..engine.outputs import write_measurements

    out = write_measurements(out_dir, result.metrics, result.summary)
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": result.config.to_dict(),
        "step": result.summary["steps"],
        "seeds": list(result.config.replica_seeds),
        "family": result.family.state_dict(),
        "optimizer": result.optimizer.state_dict(),
        "scheduler": {"last_epoch": result.scheduler.last_epoch},
    }
    atomic_write(out / "checkpoint.pt", lambda tmp: torch.save(state, tmp))
    return out

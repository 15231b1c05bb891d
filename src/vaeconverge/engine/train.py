"""One training run: the loop only steps; the model, objective and optimizer come from their builders."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..data import Dataset, PermutationBatches, as_float
from ..diagnostics import (
    GradientNoise,
    GradientNormTracker,
    full_objective_gradient,
    gradient_noise,
    smoothness,
)
from ..models import VAE, LinearVAE, build_vae, ppca_optimum
from ..nn.layers import stacks_replicas
from ..objectives import build_objective, draw_noise
from ..optim import build_optimizer, build_schedule, optimizer_spec
from ..theory.assessment import Constants, assess_run
from .ensemble import Ensemble, LoopedEnsemble, VectorisedEnsemble, clip_replica_norms_
from .loop import checkpoint_rows, run_steps
from ..runtime import flush_denormals, intra_op_threads
from .plan import Plan, plan, step_flops

# The diagnostics draw their Monte Carlo noise from their own stream, so that evaluating more or less
# often never changes the training trajectory; re-seeded at every evaluation (common random numbers).
DIAGNOSTICS_SEED_OFFSET = 0x5EED


# The default number of checkpoints: a full-data gradient costs up to about as much per example as a training
# step (README, performance), so the checkpoints' full-data passes may see at most this fraction of
# the examples the training sees, within [CHECKPOINTS_MIN, CHECKPOINTS_MAX].
CHECKPOINT_BUDGET = 0.05
CHECKPOINTS_MIN, CHECKPOINTS_MAX = 6, 40


def default_eval_points(steps: int, batch_size: int, n_examples: int, eval_samples: int) -> int:
    """How many checkpoints :data:`CHECKPOINT_BUDGET` affords a run of ``steps`` steps of ``batch_size``."""
    affordable = CHECKPOINT_BUDGET * steps * batch_size / (n_examples * eval_samples)
    return int(min(max(round(affordable), CHECKPOINTS_MIN), CHECKPOINTS_MAX))


def evaluation_steps(steps: int, every: int | None, points: int) -> frozenset[int]:
    """Checkpoints: 0, the last step, and every ``every`` steps if given; else ``points`` of them, half
    log-spaced over the first half of the run (the transient, on the log axis it is plotted on) and half
    evenly spaced over the second (where the rate is fitted and the random iterate mostly lands)."""
    if every is not None:
        grid = range(0, steps + 1, every)
    else:
        late = points // 2
        early = np.geomspace(1, max(steps / 2, 1), points - late)
        later = np.linspace(steps / 2, steps, late + 1)[1:]
        grid = np.unique(np.round(np.concatenate([early, later])).astype(int)).tolist()
    return frozenset({0, steps, *grid})


@dataclass
class TrainResult:
    """A finished (or interrupted) run of T >= 1 replicas: the trained ensemble, one metrics row per seed and
    evaluation, and a summary."""

    config: RunConfig
    dataset: Dataset
    ensemble: Ensemble
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    metrics: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> VAE:
        """The first replica (the only one of a single-seed run) as a plain module."""
        return self.ensemble.replica(0)


@dataclass(frozen=True)
class Probe:
    """Constants measured at one point of the trajectory of one replica."""

    L: float
    noise: GradientNoise
    weight_bound: float


def constants_from_probes(probes: Sequence[Probe], start: float, best: float, reference: str, d: int,
                          batch_size: int, samples: int) -> Constants:
    """The largest L, noise and weight seen over ``probes``, and delta = ``start`` - ``best`` (at least 0),
    the objective at initialisation minus the best value known (described by ``reference``)."""
    return Constants(
        L=max(p.L for p in probes),
        sigma2_x=max(p.noise.sigma2_x for p in probes),
        sigma2_eps=max(p.noise.sigma2_eps for p in probes),
        R=max(p.noise.R for p in probes),
        a=max(p.weight_bound for p in probes),
        delta=max(start - best, 0.0),
        d=d,
        batch_size=batch_size,
        samples=samples,
        delta_reference=reference,
    )


class _Evaluator:
    """Full-data diagnostics of every replica at a checkpoint of the trajectory."""

    def __init__(self, ensemble: Ensemble, dataset: Dataset, config: RunConfig) -> None:
        self.ensemble, self.x = ensemble, dataset.x
        self.eval_samples = config.eval_samples
        self.seeds = [seed + DIAGNOSTICS_SEED_OFFSET for seed in config.replica_seeds]
        self.exact = isinstance(ensemble.template, LinearVAE)

    def __call__(self) -> list[dict[str, float]]:
        generators = [torch.Generator().manual_seed(seed) for seed in self.seeds]
        full = full_objective_gradient(self.ensemble, self.x, self.eval_samples, generators)
        rows = []
        for t, (value, grad_sq_norm) in enumerate(zip(full.objective, full.grad_sq_norm, strict=True)):
            log_likelihood = math.nan
            if self.exact and math.isfinite(value):  # a diverged model has no usable closed forms
                with torch.no_grad():
                    log_likelihood = self.ensemble.replica(t).exact_log_prob(as_float(self.x)).mean().item()
            rows.append({"objective": value, "grad_sq_norm": grad_sq_norm, "log_likelihood": log_likelihood})
        return rows

    def probe_constants(self, step: int, batch_size: int) -> list[Probe]:
        """Smoothness, gradient noise and largest weight magnitude of each replica at its current parameters."""
        probes = []
        for t, seed in enumerate(self.seeds):
            model, objective = self.ensemble.replica(t), self.ensemble.objective
            generator = torch.Generator().manual_seed(seed + 1 + step)
            probes.append(Probe(
                L=smoothness(model, objective, self.x, generator),
                noise=gradient_noise(model, objective, self.x, batch_size, generator),
                weight_bound=max(p.detach().abs().max().item() for p in model.parameters()),
            ))
        return probes


def build_ensemble(config: RunConfig, x: torch.Tensor) -> tuple[Ensemble, Plan]:
    """The configured VAE once per seed (replica t's initial weights come from ``torch.manual_seed(seed_t)``),
    laid out as the size of one replica's step asks, and the plan that chose the layout."""
    models = []
    for seed in config.replica_seeds:
        torch.manual_seed(seed)
        model = build_vae(config, x.shape[1])
        model.init_from_data_(x)
        models.append(model)
    objective = build_objective(config)
    head = as_float(x[: config.batch_size])
    eps = torch.zeros(objective.samples, len(head), models[0].latent_dim, dtype=head.dtype)
    flops = step_flops(partial(objective, models[0]), head, eps)
    loop = optimizer_spec(config.optimizer).couples is not None or not stacks_replicas(models[0])
    chosen = plan(flops, len(models), config.threads, loop=loop)
    layout = VectorisedEnsemble if chosen.vectorised else LoopedEnsemble
    return layout(models, objective), chosen


def train(config: RunConfig, dataset: Dataset, progress: bool = True) -> TrainResult:
    """Train the configured VAE on ``dataset``, one replica per seed, all in a single pass; Ctrl-C stops
    early and still returns what was measured.

    Seeding: seed t fixes replica t's initial weights and one generator for its batches and noise, so
    replica t is the same whether it trains alone or beside others, and a run repeats bit for bit on CPU.
    """
    config.validate()
    ensemble, chosen = build_ensemble(config, dataset.x)
    with intra_op_threads(chosen.threads), flush_denormals(config.denormals == "flush"):
        result = _fit(config, dataset, ensemble, progress)
    result.summary["threads"] = chosen.threads
    result.summary["vectorised"] = chosen.vectorised
    return result


def _fit(config: RunConfig, dataset: Dataset, ensemble: Ensemble, progress: bool) -> TrainResult:
    """The training loop proper, with its evaluations."""
    x = dataset.x
    seeds = config.replica_seeds
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    batches = [PermutationBatches(x, config.batch_size, g) for g in generators]
    epochs = batches[0]  # all replicas share the epoch structure; only their permutations differ
    params = ensemble.parameters()
    optimizer = build_optimizer(config.optimizer, params, config.lr, config.momentum, config.adam_betas)
    scheduler = build_schedule(optimizer, config.schedule, config.schedule_power, epochs.batches_per_epoch)
    tracker = GradientNormTracker(len(seeds), len(x), ensemble.parameters_per_replica, config.batch_size)
    evaluate = _Evaluator(ensemble, dataset, config)
    result = TrainResult(config, dataset, ensemble, optimizer, scheduler)
    points = config.eval_points or default_eval_points(config.steps, config.batch_size, len(x), config.eval_samples)
    eval_steps = evaluation_steps(config.steps, config.eval_every, points)
    probe_steps = {0, config.steps // 2, config.steps} if config.constants else set()
    probes: list[Probe] = []
    samples, latent_dim = ensemble.objective.samples, ensemble.latent_dim

    start = time.perf_counter()

    def record(step: int, lr: float) -> dict[str, float]:
        measured = evaluate()
        rows = checkpoint_rows(measured, seeds, step, lr, max(epochs.epoch, 0), tracker, time.perf_counter() - start)
        if step in probe_steps:
            probes.extend(evaluate.probe_constants(step, config.batch_size))
        result.metrics.extend(rows)
        return rows[-1]

    def batch_losses() -> torch.Tensor:
        xb = as_float(x[torch.stack([b.next_indices() for b in batches])])  # one gather for every replica
        eps = torch.stack([draw_noise(samples, config.batch_size, latent_dim, g, xb.dtype) for g in generators])
        return -ensemble.surrogate(xb, eps).mean(-1)

    def squared_norms(grads: list[torch.Tensor]) -> torch.Tensor:
        norms = ensemble.squared_norms(grads)
        if config.clip_grad_norm is not None:
            clip_replica_norms_(ensemble, grads, norms, config.clip_grad_norm)
        return norms

    interrupted = run_steps(config.steps, batch_losses, params, optimizer, scheduler, tracker, epochs, squared_norms,
                            eval_steps, record, "train", progress)

    ppca = _ppca_log_likelihood(result) if isinstance(ensemble.template, LinearVAE) else None
    constants = _constants(result, probes, ppca) if probes else None
    result.summary = _summary(result, interrupted=interrupted, seconds=time.perf_counter() - start)
    if isinstance(ensemble.template, LinearVAE):
        result.summary["ppca_log_likelihood"] = ppca
    result.summary["constants"] = None if constants is None else constants.to_dict()
    result.summary.update(assess_run(config, result.metrics, constants, epochs.batches_per_epoch))
    return result


def _constants(result: TrainResult, probes: list[Probe], ppca: float | None) -> Constants:
    """The largest L and noise seen along the trajectory, and delta against the best objective known."""
    config, metrics = result.config, result.metrics
    best, reference = min(row["objective"] for row in metrics), "lowest objective measured"
    exact_optimum = config.objective == "iwae" or config.beta == 1.0  # then min -objective = -max log p(x)
    if ppca is not None and exact_optimum:
        best, reference = -ppca, "closed-form pPCA optimum"
    return constants_from_probes(probes, metrics[0]["objective"], best, reference,
                                 result.ensemble.parameters_per_replica, config.batch_size, config.samples)


def _ppca_log_likelihood(result: TrainResult) -> float | None:
    """Closed-form maximum average log-likelihood of the Linear VAE (None where degenerate)."""
    fixed = None if result.config.learn_variance else result.ensemble.template.likelihood.variance.item()
    try:
        return ppca_optimum(as_float(result.dataset.x), result.config.latent_dim, fixed).log_likelihood
    except ValueError:  # latent_dim >= D with a learned variance: the optimum is degenerate
        return None


def _summary(result: TrainResult, interrupted: bool, seconds: float) -> dict[str, Any]:
    """What the run was: its configuration, seeds, length, data and size (the measured numbers come from
    :func:`assess_run`)."""
    x = result.dataset.x
    return {
        "config": result.config.to_dict(),
        "seeds": list(result.config.replica_seeds),
        "steps": int(result.metrics[-1]["step"]),
        "seconds": seconds,
        "interrupted": interrupted,
        "data": {"name": result.dataset.name, "n": x.shape[0], "dim": x.shape[1]},
        "parameters": result.ensemble.parameters_per_replica,
        "torch": torch.__version__,
    }

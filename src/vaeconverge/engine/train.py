"""One training run: the loop only steps; the model, objective and optimizer come from their builders."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data import Dataset, PermutationBatches
from ..diagnostics import GradientNoise, GradientNormTracker, full_objective_gradient, gradient_noise, smoothness
from ..models import VAE, LinearVAE, build_vae, ppca_optimum
from ..objectives import Objective, build_objective, draw_noise
from ..optim import build_optimizer, build_schedule
from ..theory.assessment import Constants, assess

# The diagnostics draw their Monte Carlo noise from their own stream, so that evaluating more or less
# often never changes the training trajectory; re-seeded at every evaluation (common random numbers).
DIAGNOSTICS_SEED_OFFSET = 0x5EED

METRIC_COLUMNS = (
    "step",
    "epoch",
    "lr",
    "objective",
    "grad_sq_norm",
    "batch_grad_sq_norm",
    "paper_proxy",
    "log_likelihood",
    "random_iterate",
    "bound",
    "seconds",
)


def evaluation_steps(steps: int, every: int | None, points: int) -> frozenset[int]:
    """Checkpoints: 0, every ``every`` steps if given, else ``points`` log-spaced steps; always the last."""
    if every is not None:
        grid = range(0, steps + 1, every)
    else:
        grid = np.unique(np.round(np.geomspace(1, steps, points)).astype(int)).tolist()
    return frozenset({0, steps, *grid})


class TrainingDiverged(RuntimeError):
    """The full objective became NaN or infinite."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training diverged: the objective is not finite at step {step}")
        self.step = step


@dataclass
class TrainResult:
    """A finished (or interrupted) run: the trained state, one metrics row per evaluation, and a summary."""

    config: RunConfig
    dataset: Dataset
    model: VAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    metrics: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Probe:
    """Constants measured at one point of the trajectory."""

    L: float
    noise: GradientNoise
    weight_bound: float


class _Evaluator:
    """Full-data diagnostics at a checkpoint of the trajectory."""

    def __init__(self, model: VAE, objective: Objective, dataset: Dataset, config: RunConfig) -> None:
        self.model, self.objective, self.x = model, objective, dataset.x
        self.eval_samples = config.eval_samples
        self.seed = config.seed + DIAGNOSTICS_SEED_OFFSET

    def __call__(self) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed)
        full = full_objective_gradient(self.model, self.objective, self.x, self.eval_samples, generator)
        row = {"objective": full.objective, "grad_sq_norm": full.grad_sq_norm, "log_likelihood": math.nan}
        if math.isfinite(full.objective):  # a diverged model has no usable closed forms
            with torch.no_grad():
                exact = self.model.exact_log_prob(self.x)
            if exact is not None:
                row["log_likelihood"] = exact.mean().item()
        return row

    def probe_constants(self, step: int, batch_size: int) -> _Probe:
        """Smoothness, gradient noise and largest weight magnitude at the current parameters."""
        generator = torch.Generator().manual_seed(self.seed + 1 + step)
        return _Probe(
            L=smoothness(self.model, self.objective, self.x, generator),
            noise=gradient_noise(self.model, self.objective, self.x, batch_size, generator),
            weight_bound=max(p.detach().abs().max().item() for p in self.model.parameters() if p.requires_grad),
        )


def train(config: RunConfig, dataset: Dataset, progress: bool = True) -> TrainResult:
    """Train the configured VAE on ``dataset``; Ctrl-C stops early and still returns what was measured.

    Seeding: ``config.seed`` fixes the initial weights and one generator for batches and noise, so a
    seed reproduces a run bit for bit on CPU.
    """
    config.validate()
    x = dataset.x
    torch.manual_seed(config.seed)
    model = build_vae(config, x.shape[1])
    model.init_from_data_(x)
    objective = build_objective(config)
    generator = torch.Generator().manual_seed(config.seed)
    batches = PermutationBatches(x, config.batch_size, generator)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(config.optimizer, params, config.lr, config.momentum, config.adam_betas)
    scheduler = build_schedule(optimizer, config.schedule, config.schedule_power, batches.batches_per_epoch)
    tracker = GradientNormTracker(len(x), sum(p.numel() for p in params), config.batch_size)
    evaluate = _Evaluator(model, objective, dataset, config)
    result = TrainResult(config, dataset, model, optimizer, scheduler)
    eval_steps = evaluation_steps(config.steps, config.eval_every, config.eval_points)
    probe_steps = {0, config.steps // 2, config.steps} if config.constants else set()
    probes: list[_Probe] = []

    start = time.perf_counter()

    def record(step: int, lr: float) -> dict[str, float]:
        row = {"step": step, "epoch": max(batches.epoch, 0), "lr": lr, **evaluate()}
        row["batch_grad_sq_norm"] = tracker.read_window()
        row["paper_proxy"] = tracker.paper_proxy
        row["random_iterate"] = row["bound"] = math.nan  # filled in by the assessment at the end
        result.metrics.append(row)
        if not math.isfinite(row["objective"]):
            raise TrainingDiverged(step)
        if step in probe_steps:
            probes.append(evaluate.probe_constants(step, config.batch_size))
        row["seconds"] = time.perf_counter() - start
        return row

    record(0, optimizer.param_groups[0]["lr"])
    step, interrupted = 0, False
    bar = tqdm(total=config.steps, desc="train", unit="step", disable=not progress or None, leave=False)
    try:
        for step in range(1, config.steps + 1):
            xb = batches.next()
            eps = draw_noise(objective.samples, config.batch_size, model.latent_dim, generator, x.dtype)
            loss = -objective(model, xb, eps).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            tracker.observe(p.grad for p in params)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if batches.epoch_finished:
                tracker.end_epoch()
            if step in eval_steps:
                row = record(step, lr)
                bar.set_postfix(objective=f"{row['objective']:.4g}", grad_sq=f"{row['grad_sq_norm']:.3g}")
            bar.update()
    except KeyboardInterrupt:
        interrupted = True
        if result.metrics[-1]["step"] != step - 1 and step > 1:
            record(step - 1, optimizer.param_groups[0]["lr"])
    finally:
        bar.close()

    ppca = _ppca_log_likelihood(result) if isinstance(model, LinearVAE) else None
    constants = _constants(result, probes, ppca) if probes else None
    result.summary = _summary(result, steps=result.metrics[-1]["step"], interrupted=interrupted,
                              seconds=time.perf_counter() - start)
    if isinstance(model, LinearVAE):
        result.summary["ppca_log_likelihood"] = ppca
    result.summary["constants"] = None if constants is None else constants.to_dict()
    result.summary.update(assess(config, result.metrics, constants, batches.batches_per_epoch))
    return result


def _constants(result: TrainResult, probes: list[_Probe], ppca: float | None) -> Constants:
    """The largest L and noise seen along the trajectory, and delta against the best objective known."""
    config, metrics = result.config, result.metrics
    best, reference = min(row["objective"] for row in metrics), "lowest objective measured"
    exact_optimum = config.objective == "iwae" or config.beta == 1.0  # then min -objective = -max log p(x)
    if ppca is not None and exact_optimum:
        best, reference = -ppca, "closed-form pPCA optimum"
    return Constants(
        L=max(p.L for p in probes),
        sigma2_x=max(p.noise.sigma2_x for p in probes),
        sigma2_eps=max(p.noise.sigma2_eps for p in probes),
        R=max(p.noise.R for p in probes),
        a=max(p.weight_bound for p in probes),
        delta=max(metrics[0]["objective"] - best, 0.0),
        d=sum(p.numel() for p in result.model.parameters() if p.requires_grad),
        batch_size=config.batch_size,
        samples=config.samples,
        delta_reference=reference,
    )


def _ppca_log_likelihood(result: TrainResult) -> float | None:
    """Closed-form maximum average log-likelihood of the Linear VAE (None where degenerate)."""
    fixed = None if result.config.learn_variance else result.model.likelihood.variance.item()
    try:
        return ppca_optimum(result.dataset.x, result.config.latent_dim, fixed).log_likelihood
    except ValueError:  # latent_dim >= D with a learned variance: the optimum is degenerate
        return None


def _summary(result: TrainResult, steps: int, interrupted: bool, seconds: float) -> dict[str, Any]:
    """The run's headline numbers; ``log_likelihood`` is exact (closed form) or None."""
    last = result.metrics[-1]
    x = result.dataset.x
    log_lik = last["log_likelihood"]
    summary: dict[str, Any] = {
        "config": result.config.to_dict(),
        "steps": steps,
        "objective": last["objective"],
        "grad_sq_norm": last["grad_sq_norm"],
        "min_grad_sq_norm": min(row["grad_sq_norm"] for row in result.metrics),
        "paper_proxy": _or_none(last["paper_proxy"]),
        "log_likelihood": _or_none(log_lik),
        "seconds": seconds,
        "interrupted": interrupted,
        "data": {"name": result.dataset.name, "n": x.shape[0], "dim": x.shape[1]},
        "parameters": sum(p.numel() for p in result.model.parameters() if p.requires_grad),
        "torch": torch.__version__,
    }
    return summary


def _or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None

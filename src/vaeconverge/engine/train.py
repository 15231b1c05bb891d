"""One training run: the loop only steps; the model, objective and optimizer come from their builders."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, RunConfig
from ..data import Dataset, PermutationBatches, as_float
from ..diagnostics import full_objective_gradient
from ..diagnostics.constants import Loss, example_gradient_draws, fixed_noise_loss
from ..diagnostics.snr import vae_gradient_draws
from ..models import VAE, LinearVAE, build_vae, ppca_optimum
from ..nn.layers import stacks_replicas
from ..objectives import ELBO, IWAE, OBJECTIVES, VRIWAE, build_objective, draw_noise
from ..optim import build_optimizer, build_schedule, optimizer_spec
from ..runtime import (
    LoadFollower,
    LoadSample,
    computing,
    intra_op_threads,
    network_precision,
    precision_note,
    require_memory,
    resolve_device,
    to_device,
)
from .checkpoint import FORMAT, save_checkpoint
from .ensemble import Ensemble, LoopedEnsemble, VectorisedEnsemble, clip_replica_norms_
from .loop import run_steps
from .plan import Plan, plan, step_cost
from .recorder import ObjectiveFloor, Recorder, Subject, diagnostics_seed


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
    loop: dict[str, Any] = field(default_factory=dict)  # the loop's state at its last step, which resumes it

    @property
    def model(self) -> VAE:
        """The first replica (the only one of a single-seed run) as a plain module."""
        return self.ensemble.replica(0)

    def save_checkpoint(self, path: str | Path) -> None:
        """Save each replica's weights, the optimizer's state and the loop's (``engine.checkpoint``)."""
        save_checkpoint(path, FORMAT, self.config.to_dict(), self.summary["steps"], self.config.replica_seeds,
                        self.optimizer, self.scheduler, data_dim=self.dataset.x.shape[1],
                        models=self.ensemble.state_dicts(), loop=self.loop)


class EnsembleSubject(Subject):
    """The replicas of a VAE ensemble as the recorder measures them: full-data gradients of the value of the
    objective (exact for a Linear VAE's ELBO), the encoder's use of the latent space, and per-example gradients
    of one replica (``diagnostics/constants.py``)."""

    def __init__(self, ensemble: Ensemble, dataset: Dataset, config: RunConfig, chosen: Plan | None = None) -> None:
        self.ensemble, self.x, self.config = ensemble, dataset.x, config
        self.plan = chosen or Plan(vectorised=isinstance(ensemble, VectorisedEnsemble), threads=1)
        self.seeds = config.replica_seeds
        self.batch_size, self.samples = config.batch_size, ensemble.objective.samples
        self.parameters = ensemble.parameters_per_replica
        self.linear = isinstance(ensemble.template, LinearVAE)
        if self.linear and isinstance(ensemble.objective, ELBO):
            self.estimator = "exact (the Linear VAE's ELBO in closed form)"

    def measure(self) -> list[dict[str, float]]:
        device = self.ensemble.device  # draws made where they are used: a checkpoint takes 2 n K per replica
        generators = [torch.Generator(device).manual_seed(diagnostics_seed(seed)) for seed in self.seeds]
        full = full_objective_gradient(self.ensemble, self.x, self.config.eval_samples, generators,
                                       chunk_size=self.plan.eval_chunk)
        usages = self.ensemble.posterior_usage(self.x, self.plan.eval_chunk)
        rows = []
        for t, usage in enumerate(usages):
            row = {"objective": full.objective[t], "objective_se": full.objective_se[t],
                   "grad_sq_norm": full.grad_sq_norm[t],
                   "grad_sq_norm_se": full.grad_sq_norm_se[t], "grad_sq_norm_biased": full.grad_sq_norm_biased[t],
                   "log_likelihood": math.nan, "kl": math.nan, "active_units": math.nan}
            if math.isfinite(row["objective"]):  # a diverged model has no usable posterior or closed forms
                row.update(kl=usage.kl, active_units=usage.active_units)
                if self.linear:
                    with self.one_replica(t):
                        row.update(self._closed_forms(self.ensemble.replica(t)))
            rows.append(row)
        return rows

    def _closed_forms(self, model: LinearVAE) -> dict[str, float]:
        """The exact log-likelihood of a Linear VAE, and where the objective is its ELBO (whose expectation over
        the noise is in closed form) the exact objective and gradient, with no Monte Carlo error."""
        x = as_float(to_device(self.x, self.ensemble.device))
        with torch.no_grad():
            out = {"log_likelihood": model.exact_log_prob(x).mean().item()}
        if self.estimator.startswith("exact"):
            loss = -model.exact_elbo(x, self.ensemble.objective.beta).mean()
            grads = torch.autograd.grad(loss, list(model.parameters()))
            out |= {"objective": loss.item(), "grad_sq_norm": sum(g.square().sum() for g in grads).item(),
                    "objective_se": 0.0, "grad_sq_norm_se": 0.0}
        return out

    def one_replica(self, t: int) -> AbstractContextManager[None]:
        """Small (vectorised) replicas are measured one at a time on one thread, as their single runs are: a product
        split over threads rounds differently (the smoothness probe's Lanczos iteration carries that into L)."""
        return intra_op_threads(1) if self.plan.vectorised else nullcontext()

    def fixed_noise_loss(self, t: int, generator: torch.Generator, seed: int
                         ) -> tuple[list[Loss], dict[str, torch.Tensor]]:
        return fixed_noise_loss(self.ensemble.replica(t), self.ensemble.objective, self.x, generator,
                                chunk=self.plan.hvp_chunk)

    def gradient_draws(self, t: int, generator: torch.Generator, seed: int) -> torch.Tensor:
        return example_gradient_draws(self.ensemble.replica(t), self.ensemble.objective, self.x, generator,
                                      self.plan.probe_examples)

    def weights(self, t: int) -> list[torch.Tensor]:
        return list(self.ensemble.replica(t).parameters())

    def snr_gradients(self, t: int, generator: torch.Generator, seed: int, draws: int) -> dict[str, torch.Tensor]:
        return vae_gradient_draws(self.ensemble.replica(t), self.ensemble.objective, self.x, self.batch_size, draws,
                                  generator)

    @cached_property
    def floor(self) -> ObjectiveFloor | None:
        """The closed-form pPCA optimum of a Linear VAE where the objective's maximum is log p(x); else, for the
        ELBO (any beta >= 0) and the IWAE and VR-IWAE bounds, which lie below sup_z log p(x | z), the mean over the
        data of minus the likelihood's ceiling (None where it has none, as under a learned variance)."""
        exact_optimum = not OBJECTIVES[self.config.objective].uses_beta or self.config.beta == 1.0
        if self.linear and self.ppca_log_likelihood is not None and exact_optimum:
            return ObjectiveFloor(-self.ppca_log_likelihood, "closed-form pPCA optimum", exact=True)
        if not isinstance(self.ensemble.objective, (ELBO, IWAE, VRIWAE)):
            return None
        likelihood = self.ensemble.template.likelihood
        total = 0.0
        for chunk in self.x.split(4096):
            ceiling = likelihood.log_prob_ceiling(as_float(chunk))
            if ceiling is None:
                return None
            total += ceiling.double().sum().item()
        return ObjectiveFloor(-total / len(self.x), f"likelihood ceiling: {likelihood.ceiling}")

    def objective_floor(self) -> ObjectiveFloor | None:
        return self.floor

    @cached_property
    def ppca_log_likelihood(self) -> float | None:
        """Closed-form maximum average log-likelihood of the Linear VAE (None where degenerate); it depends on
        the data and the configuration only."""
        fixed = None if self.config.learn_variance else self.ensemble.template.likelihood.variance.item()
        try:
            return ppca_optimum(as_float(self.x), self.config.latent_dim, fixed).log_likelihood
        except ValueError:  # latent_dim >= D with a learned variance: the optimum is degenerate
            return None


def build_ensemble(config: RunConfig, x: torch.Tensor, device: torch.device | None = None,
                   weights: list[dict[str, torch.Tensor]] | None = None) -> tuple[Ensemble, Plan]:
    """The configured VAE once per seed (replica t's initial weights come from ``torch.manual_seed(seed_t)`` on
    the host, the same on every device, or from its state dict in ``weights``), moved to ``device`` (default: the
    host), laid out as the size of one replica's step asks, and the plan that chose the layout. A run that would
    not fit in memory is refused before anything is allocated."""
    load = LoadSample()  # the other processes' use of the cores, while the run is being built
    objective = build_objective(config)
    seeds, batch = config.replica_seeds, config.batch_size
    with torch.device("meta"):
        probe = build_vae(config, x.shape[1])
        head = torch.empty(batch, x.shape[1])
        cost = step_cost(probe, partial(objective, probe), batch, head,
                         torch.empty(objective.samples, batch, probe.latent_dim))
    state, activations = cost.run_bytes(len(seeds), len(x), probes=config.constants)
    run = (f"training {len(seeds)} replica{'s' if len(seeds) > 1 else ''} of {cost.parameters:,} parameters "
           f"(--hidden, --depth) on batches of {batch} x {objective.samples} latent samples (--samples)")
    require_memory("--hidden" if state > activations else "--batch-size", state + activations, run, device)
    models = []
    for t, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model = build_vae(config, x.shape[1])
        model.init_from_data_(x)
        if weights is not None:
            model.load_state_dict(weights[t])
        models.append(model.to(device))
    loop = optimizer_spec(config.optimizer).couples is not None or not stacks_replicas(models[0])
    chosen = replace(plan(cost.flops, len(models), config.threads, loop=loop, device=device, load=load),
                     eval_chunk=cost.eval_chunk(), hvp_chunk=cost.hvp_chunk(), probe_examples=cost.probe_examples())
    layout = VectorisedEnsemble if chosen.vectorised else LoopedEnsemble
    return layout(models, objective), chosen


def train(config: RunConfig, dataset: Dataset, progress: bool = True,
          resume_from: dict[str, Any] | None = None) -> TrainResult:
    """Train the configured VAE on ``dataset``, one replica per seed, all in a single pass; Ctrl-C stops
    early and still returns what was measured.

    Seeding: seed t fixes replica t's initial weights and one generator for its batches and noise, so
    replica t is the same whether it trains alone or beside others, and a run repeats bit for bit on CPU.

    ``resume_from``: a checkpoint of this run (as ``engine.checkpoint.load_resumable`` reads it), continued from
    its step to ``config.steps`` with its weights, optimizer, schedule, batch and noise streams and measurements,
    as the run would have gone on (:meth:`Recorder.restore` says which checkpoints and probes it keeps).
    """
    config.validate()
    device = resolve_device(config.device)
    if resume_from is not None and resume_from["loop"]["device"] != device.type:
        raise ConfigError("--device", f"the run trained on {resume_from['loop']['device']}, where its noise streams "
                                      f"are; resume it there, not on {device.type}")
    weights = None if resume_from is None else resume_from["models"]
    ensemble, chosen = build_ensemble(config, dataset.x, device, weights)
    with computing(chosen.threads, config.denormals == "flush"):
        result = _fit(config, dataset, ensemble, chosen, progress, resume_from)
    result.summary["threads"] = chosen.threads
    result.summary["vectorised"] = chosen.vectorised
    result.summary["device"] = str(device)
    return result


def _fit(config: RunConfig, dataset: Dataset, ensemble: Ensemble, chosen: Plan, progress: bool,
         resume_from: dict[str, Any] | None) -> TrainResult:
    """The training loop proper, measured by a :class:`Recorder`."""
    x, device = dataset.x, ensemble.device  # the data stay on the host; each batch goes to the device
    generators, noise, batches = replica_streams(config.replica_seeds, x, config.batch_size, device)
    epochs = batches[0]  # all replicas share the epoch structure; only their permutations differ
    params = ensemble.parameters()
    optimizer = build_optimizer(config.optimizer, params, config.lr, config.momentum, config.adam_betas)
    scheduler = build_schedule(optimizer, config.schedule, config.schedule_power, epochs.batches_per_epoch)
    subject = EnsembleSubject(ensemble, dataset, config, chosen)
    recorder = Recorder(subject, config.steps, len(x), eval_every=config.eval_every, eval_points=config.eval_points,
                        eval_samples=config.eval_samples, constants=config.constants,
                        snr_draws=config.snr_draws if config.snr else None, device=ensemble.device)
    start = 0
    if resume_from is not None:
        start = resume_from["step"]
        _restore_streams(resume_from["loop"], generators, noise, batches)
        try:
            optimizer.load_state_dict(resume_from["optimizer"])
        except ValueError:
            raise ConfigError("--resume", "the checkpoint's optimizer state does not fit this version's layout of "
                                          "the replicas' parameters (an earlier vaeconverge wrote it); start the run "
                                          "afresh") from None
        scheduler.last_epoch = resume_from["scheduler"]["last_epoch"]
        recorder.restore(resume_from["loop"]["recorder"], start)
    batch_losses = replica_batch_losses(ensemble, x, batches, noise, config.precision)

    def squared_norms(grads: list[torch.Tensor]) -> torch.Tensor:
        norms = ensemble.squared_norms(grads)
        if config.clip_grad_norm is not None:
            clip_replica_norms_(ensemble, grads, norms, config.clip_grad_norm)
        return norms

    follower = LoadFollower(chosen.threads) if chosen.follows_load else None
    with follower or nullcontext():
        note = precision_note(config.precision, device)
        interrupted = run_steps(config.steps, batch_losses, params, optimizer, scheduler, recorder, epochs,
                                squared_norms, "train", progress, start, follower, [note] if note else [],
                                ensemble.zero_grad)

    loop = {"streams": [_stream_state(g, b) for g, b in zip(generators, batches, strict=True)],
            "noise": None if noise is generators else [g.get_state() for g in noise], "device": device.type,
            "recorder": recorder.state(), "data": {**dataset_facts(dataset), "digest": data_digest(dataset)}}
    extras = {"ppca_log_likelihood": subject.ppca_log_likelihood} if subject.linear else {}
    summary = recorder.summary(config.assessed(), config=config.to_dict(), data=dataset_facts(dataset),
                               interrupted=interrupted, batches_per_epoch=epochs.batches_per_epoch)
    extras["thread_changes"] = [] if follower is None else [list(change) for change in follower.changes]
    return TrainResult(config, dataset, ensemble, optimizer, scheduler, recorder.metrics,
                       summary.with_extras(**extras).to_dict(), loop)


def replica_streams(seeds: Sequence[int], x: torch.Tensor, batch_size: int, device: torch.device
                    ) -> tuple[list[torch.Generator], list[torch.Generator], list[PermutationBatches]]:
    """Each replica's streams, from its seed: a host generator that orders its batches (and, on the host, draws
    its noise), the generator of its noise (on another device, one of that device with the same seed), and its
    batches of ``x``."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    noise = generators if device.type == "cpu" else [torch.Generator(device).manual_seed(seed) for seed in seeds]
    return generators, noise, [PermutationBatches(x, batch_size, g) for g in generators]


def replica_batch_losses(ensemble: Ensemble, x: torch.Tensor, batches: Sequence[PermutationBatches],
                         noise: Sequence[torch.Generator], precision: str = "float32") -> Callable[[], torch.Tensor]:
    """A function giving every replica's mean surrogate loss (T,) on its next batch of the host's ``x`` (one gather
    for all replicas, moved to the ensemble's device) under its next noise draw, with the networks in
    ``precision`` (``runtime.network_precision``; the diagnostics, which evaluate elsewhere, stay float32)."""
    samples, latent_dim, device = ensemble.objective.samples, ensemble.latent_dim, ensemble.device
    networks = network_precision(precision, device)

    def batch_losses() -> torch.Tensor:
        rows = x[torch.stack([b.next_indices() for b in batches])]
        xb = as_float(to_device(rows, device))
        eps = torch.stack([draw_noise(samples, b.batch_size, latent_dim, g, xb.dtype)
                           for b, g in zip(batches, noise, strict=True)])
        with networks:
            values = ensemble.surrogate(xb, eps)
        return -values.mean(-1)

    return batch_losses


def _stream_state(generator: torch.Generator, batches: PermutationBatches) -> dict[str, Any]:
    """Where a replica's stream of batches (and, on the host, of noise) stands: its generator's state and the
    epoch's permutation, position and number."""
    return {"generator": generator.get_state(), **batches.state_dict()}


def _restore_streams(loop: dict[str, Any], generators: list[torch.Generator], noise: list[torch.Generator],
                     batches: list[PermutationBatches]) -> None:
    """Put each replica's streams back where :func:`_stream_state` (and the noise generators' states) found them."""
    for generator, stream, saved in zip(generators, batches, loop["streams"], strict=True):
        generator.set_state(saved["generator"].cpu())
        stream.load_state_dict(saved)
    if loop["noise"] is not None:
        for generator, saved in zip(noise, loop["noise"], strict=True):
            generator.set_state(saved.cpu())


DIGEST_ROWS = 4096


def dataset_facts(dataset: Dataset) -> dict[str, Any]:
    """The ``data`` entry of a summary: the data set's name, number of examples and features."""
    return {"name": dataset.name, "n": dataset.x.shape[0], "dim": dataset.x.shape[1]}


def data_digest(dataset: Dataset) -> str:
    """A digest of the data's values (BLAKE2b of up to :data:`DIGEST_ROWS` rows spread evenly over the set), which a
    checkpoint keeps so that a resumed run can tell its own data from other data of the same shape."""
    x = dataset.x
    rows = torch.linspace(0, len(x) - 1, min(len(x), DIGEST_ROWS)).long()
    return hashlib.blake2b(x[rows].cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()

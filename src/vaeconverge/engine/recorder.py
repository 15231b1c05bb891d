"""The measured-run core: what turns a training trajectory into the measurements the theorems speak of.

One :class:`Recorder` serves ``vaeconverge train`` (an ensemble of VAEs), BBVI and the ConvergenceMonitor (a
user's own loop). It owns the checkpoint schedule, the diagnostics' noise streams, the metric rows, the
constants probes at steps 0, n/2 and n and their reduction to :class:`Constants`, and the run's summary. What
differs between kinds of run is a :class:`Subject`: how to measure the full objective and its gradient, the
fixed-noise loss whose Hessian gives L, and the gradients whose spread gives the noise.

It sits in ``engine/`` because it holds a run against the theory (``theory.assessment``), which sits above
``diagnostics/``; the estimators themselves live in ``diagnostics/constants.py``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..diagnostics import GradientNoise, GradientNormTracker, noise_from_gradients, smoothness_estimate
from ..diagnostics.constants import Loss
from ..diagnostics.seeds import seed_matrix
from ..diagnostics.snr import gradient_snr
from ..theory.assessment import ESTIMATED, Constants, assess_run
from ..theory.run import AssessedRun

# The diagnostics draw their Monte Carlo noise from their own stream, so that evaluating more or less often
# never changes the training trajectory; re-seeded at every evaluation (common random numbers).
DIAGNOSTICS_SEED_OFFSET = 0x5EED
# The gradient-SNR draws' stream sits this far above the diagnostics' (beyond any checkpoint's probe seed), and is
# the same at every checkpoint: each checkpoint's SNR is read on the same minibatches and noise.
SNR_SEED_OFFSET = 1 << 62

# The parameter groups whose gradient SNR a run records (docs/theory.md section 6): the encoder's phi, whose SNR the
# theory says falls like sqrt(B / K) under IWAE, and the generative model's theta (decoder and likelihood), whose
# SNR rises like sqrt(B K). A subject without one of them (BBVI has no decoder) records NaN for it.
SNR_GROUPS = ("encoder", "decoder")
# Per group: Rainforth et al.'s mean over coordinates of |mean| / std, and the whole group's norm-based ratio,
# each with its standard error (``diagnostics/snr.py``).
SNR_COLUMNS = tuple(f"snr{kind}_{group}{se}" for group in SNR_GROUPS for kind in ("", "_norm") for se in ("", "_se"))

# The default number of checkpoints: a full-data gradient costs up to about as much per example as a training
# step (README, performance), so the checkpoints' full-data passes may see at most this fraction of the examples
# the training sees, within [CHECKPOINTS_MIN, CHECKPOINTS_MAX].
CHECKPOINT_BUDGET = 0.05
CHECKPOINTS_MIN, CHECKPOINTS_MAX = 6, 40

METRIC_COLUMNS = (
    "seed",
    "step",
    "epoch",
    "lr",
    "objective",
    "objective_se",
    "grad_sq_norm",
    "grad_sq_norm_se",
    "grad_sq_norm_biased",
    "batch_grad_sq_norm",
    "paper_proxy",
    "log_likelihood",
    "kl",
    "active_units",
    "random_iterate",
    "bound",
    "seconds",
    *SNR_COLUMNS,
)


class TrainingDiverged(RuntimeError):
    """The full objective of a replica became NaN or infinite."""

    def __init__(self, step: int, seed: int) -> None:
        super().__init__(f"training diverged: the objective of seed {seed} is not finite at step {step}")
        self.step = step
        self.seed = seed


def diagnostics_seed(seed: int) -> int:
    """The seed of replica ``seed``'s full-objective evaluations (the same at every checkpoint)."""
    return seed + DIAGNOSTICS_SEED_OFFSET


def probe_seed(seed: int, step: int) -> int:
    """The seed of replica ``seed``'s constants probe at ``step``."""
    return diagnostics_seed(seed) + 1 + step


def snr_seed(seed: int) -> int:
    """The seed of replica ``seed``'s gradient-SNR draws (the same at every checkpoint)."""
    return diagnostics_seed(seed) + SNR_SEED_OFFSET


def default_eval_points(steps: int, batch_size: int, n_examples: int, eval_samples: int) -> int:
    """How many checkpoints :data:`CHECKPOINT_BUDGET` affords a run of ``steps`` steps of ``batch_size``."""
    affordable = CHECKPOINT_BUDGET * steps * batch_size / (2 * n_examples * eval_samples)  # two replicates
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


@dataclass(frozen=True)
class Probe:
    """Constants measured at one point of the trajectory of the replica of ``seed``."""

    L: float
    noise: GradientNoise
    weight_bound: float
    seed: int = 0
    step: int = 0


def probe_maxima(probes: Sequence[Probe]) -> dict[str, float]:
    """The largest L, noise components and weight seen over ``probes``: what the bounds take."""
    return {"L": max(p.L for p in probes), "sigma2_x": max(p.noise.sigma2_x for p in probes),
            "sigma2_eps": max(p.noise.sigma2_eps for p in probes), "R": max(p.noise.R for p in probes),
            "a": max(p.weight_bound for p in probes)}


# The starting objective enters delta as its measured value plus this many Monte Carlo standard errors.
START_MARGIN_SE = 3.0


@dataclass(frozen=True)
class ObjectiveFloor:
    """A value the objective (to be minimised) cannot go below, and what it is. ``exact``: it is the infimum
    itself (a closed-form optimum), not only a lower bound on it."""

    value: float
    reference: str
    exact: bool = False


def constants_from_probes(probes: Sequence[Probe], start_rows: Sequence[dict[str, float]],
                          floor: ObjectiveFloor | None, lowest: float, d: int, batch_size: int, samples: int
                          ) -> Constants:
    """:func:`probe_maxima` over ``probes``, and delta = start - floor (at least 0), with their provenance.

    The start is the largest over the replicas' first rows (``start_rows``) of the objective plus
    :data:`START_MARGIN_SE` standard errors. Against a ``floor``, delta is "provable" (up to that margin), or
    "exact" where the floor is the infimum and the start has no Monte Carlo error; without one it is measured
    against the ``lowest`` objective seen, an "estimate" that the run may not have reached the infimum.
    """
    errors = [row.get("objective_se", math.nan) for row in start_rows]
    start = max(row["objective"] + START_MARGIN_SE * (se if math.isfinite(se) else 0.0)
                for row, se in zip(start_rows, errors, strict=True))
    if floor is None:
        delta, reference, provenance = start - lowest, "lowest objective measured", "estimate"
    else:
        exact = floor.exact and all(se == 0.0 for se in errors)
        delta, reference, provenance = start - floor.value, floor.reference, "exact" if exact else "provable"
    return Constants(**probe_maxima(probes), delta=max(delta, 0.0), d=d, batch_size=batch_size,
                     samples=samples, delta_reference=reference, provenance={**ESTIMATED, "delta": provenance})


class Subject(ABC):
    """What a kind of run plugs into the :class:`Recorder`: its replicas' seeds, their minibatch (B, K), and
    how to measure them. ``examples_per_row`` is the number of examples one row of :meth:`gradient_draws`
    covers (1: per-example gradients; B: minibatch gradients whose examples share one noise draw); ``estimator``
    says how :meth:`measure` reads ||grad L||^2."""

    seeds: Sequence[int]
    batch_size: int
    samples: int
    parameters: int  # trained parameters per replica
    examples_per_row: int = 1
    estimator: str = "unbiased"  # how measure() reads ||grad L||^2: the summary's grad_sq_norm_estimator

    @abstractmethod
    def measure(self) -> list[dict[str, float]]:
        """Per replica, at the current parameters, with the noise of :func:`diagnostics_seed`: the full
        ``objective`` (to be minimised), its gradient's squared norm (``grad_sq_norm``, unbiased, with its standard
        error ``grad_sq_norm_se`` and the single-replicate ``grad_sq_norm_biased``) and the exact
        ``log_likelihood`` (NaN where there is no closed form); optionally the encoder's ``kl`` and
        ``active_units`` (``diagnostics/posterior.py``), NaN where absent."""

    @abstractmethod
    def fixed_noise_loss(self, t: int, generator: torch.Generator, seed: int
                         ) -> tuple[Loss | Sequence[Loss], dict[str, Tensor]]:
        """Replica t's loss as a function of its parameters with its noise held fixed (or the terms it sums, each
        evaluated on its own to bound the memory: ``diagnostics.constants.hessian_norm``), and those parameters:
        the function whose Hessian gives L. Draws, if any, come from ``generator``."""

    @abstractmethod
    def gradient_draws(self, t: int, generator: torch.Generator, seed: int) -> Tensor:
        """Gradients of replica t's loss, (rows, 2, P): two independent noise draws for each row of
        ``examples_per_row`` examples, the rows drawn at random from the data (from ``generator``)."""

    @abstractmethod
    def weights(self, t: int) -> list[Tensor]:
        """Replica t's trained parameters (their largest magnitude is the theory's weight bound a)."""

    def snr_gradients(self, t: int, generator: torch.Generator, seed: int, draws: int) -> dict[str, Tensor]:
        """``draws`` independent minibatch gradients of replica t's training loss (the surrogate training follows,
        at the training batch size, each draw with a fresh minibatch and fresh noise, drawn from ``generator`` or
        seeded by ``seed``), per group of :data:`SNR_GROUPS` the subject has: {group: (draws, its parameters)}."""
        raise NotImplementedError(f"{type(self).__name__} does not measure gradient SNR")

    def probing(self, t: int, seed: int) -> contextlib.AbstractContextManager[None]:
        """The context the probe of replica t runs in (seeded ``seed``); nothing by default."""
        return contextlib.nullcontext()

    def one_replica(self, t: int) -> contextlib.AbstractContextManager[None]:
        """The context of every measurement of replica t alone (its probes, its SNR, its posterior's use of the
        latent space); nothing by default."""
        return contextlib.nullcontext()

    def objective_floor(self) -> ObjectiveFloor | None:
        """A value the objective provably cannot go below (None: none is known, and delta is measured against
        the lowest objective seen)."""
        return None


# The top-level keys of summary.json (of a VAE run, a BBVI run and a monitored run together): what a sweep's
# finding may name. The tests hold it to the summaries the runs write.
SUMMARY_KEYS = (
    "config", "seeds", "steps", "seconds", "diagnostics_seconds", "interrupted", "data", "parameters", "torch",
    "constants", "grad_sq_norm_estimator",
    # theory.assessment.assess_run
    "objective", "grad_sq_norm", "grad_sq_norm_se", "grad_sq_norm_biased", "paper_proxy", "log_likelihood",
    "random_iterate", "bound", "bands", "per_seed", "paper_shape", "rate_slope", "rate_ci", "rate", "collapsed",
    # one kind of run's extras
    "threads", "thread_changes", "vectorised", "device", "ppca_log_likelihood", "log_evidence", "evidence_gap",
    "posterior", "monitor_seconds",
    # the gradient SNR at the first and last checkpoints (None unless measured)
    "snr",
)


@dataclass(frozen=True)
class RunSummary:
    """What a run was and what was measured: serialised by :meth:`to_dict` as ``summary.json``. ``assessment``
    holds :func:`~vaeconverge.theory.assessment.assess_run`'s entries, ``extras`` those of one kind of run."""

    config: dict[str, Any]
    seeds: list[int]
    steps: int
    seconds: float
    diagnostics_seconds: dict[str, float]
    interrupted: bool
    data: dict[str, Any]
    parameters: int
    constants: Constants | None
    assessment: dict[str, Any]
    grad_sq_norm_estimator: str = "unbiased"
    extras: dict[str, Any] = field(default_factory=dict)
    torch: str = torch.__version__

    def with_extras(self, **extras: Any) -> RunSummary:
        """This summary with more kind-specific entries."""
        return replace(self, extras={**self.extras, **extras})

    def to_dict(self) -> dict[str, Any]:
        """The summary.json dictionary."""
        return {
            "config": self.config,
            "seeds": self.seeds,
            "steps": self.steps,
            "seconds": self.seconds,
            "diagnostics_seconds": self.diagnostics_seconds,
            "interrupted": self.interrupted,
            "data": self.data,
            "parameters": self.parameters,
            "torch": self.torch,
            "constants": None if self.constants is None else self.constants.to_dict(),
            "grad_sq_norm_estimator": self.grad_sq_norm_estimator,
            **self.assessment,
            **self.extras,
        }


class Recorder:
    """Measures one run of the replicas of ``subject`` over ``steps`` steps.

    The stepping code reports each minibatch gradient's squared norms (:meth:`observe`), the ends of epochs
    (:meth:`end_epoch`) and calls :meth:`record` at each of :attr:`checkpoints`. ``strict``: a non-finite
    objective raises :class:`TrainingDiverged`; otherwise it is recorded with a warning (a user's loop goes on).
    ``snr_draws``: measure each replica's gradient SNR per group at every checkpoint from that many draws
    (:meth:`snr`); None: not measured (its columns NaN).
    """

    def __init__(self, subject: Subject, steps: int, n_examples: int, *, eval_every: int | None = None,
                 eval_points: int | None = None, eval_samples: int = 1, constants: bool = True,
                 strict: bool = True, device: torch.device | str | None = None, snr_draws: int | None = None
                 ) -> None:
        self.subject = subject
        self.steps = steps
        points = eval_points or default_eval_points(steps, subject.batch_size, n_examples, eval_samples)
        self.checkpoints = evaluation_steps(steps, eval_every, points)
        self.probe_steps = frozenset({0, steps // 2, steps}) if constants else frozenset()
        self.tracker = GradientNormTracker(len(subject.seeds), n_examples, subject.parameters, subject.batch_size,
                                           device=device)
        self.strict = strict
        self.metrics: list[dict[str, float]] = []
        self.probes: list[Probe] = []
        self.start = time.perf_counter()
        # wall time of the checkpoints' measurements and of the constants probes, within ``seconds``
        self.diagnostics_seconds = {"checkpoints": 0.0, "probes": 0.0} | ({"snr": 0.0} if snr_draws else {})
        self.snr_draws = snr_draws

    def observe(self, squared_norms: Tensor) -> None:
        """One step's minibatch gradient squared norms, one per replica."""
        self.tracker.observe(squared_norms)

    def end_epoch(self) -> None:
        """An epoch just ended (the paper's proxy is per epoch)."""
        self.tracker.end_epoch()

    def record(self, step: int, lr: float, epoch: int, measured: list[dict[str, float]] | None = None
               ) -> list[dict[str, float]]:
        """The :data:`METRIC_COLUMNS` rows of a checkpoint, one per replica (``measured``: the subject's
        :meth:`~Subject.measure` if already taken), with the constants probed at :attr:`probe_steps`. The
        random iterate and the bound are filled in by :meth:`summary`. The recorder changes only once all is
        measured, so that a checkpoint cut short (Ctrl-C) leaves it as it was."""
        if measured is None:
            began = time.perf_counter()
            measured = self.subject.measure()
            self.diagnostics_seconds["checkpoints"] += time.perf_counter() - began
        seconds = time.perf_counter() - self.start
        rows = []
        for seed, row in zip(self.subject.seeds, measured, strict=True):
            if not math.isfinite(row["objective"]):
                if self.strict:
                    raise TrainingDiverged(step, seed)
                warnings.warn(f"the full objective is not finite at step {step}", stacklevel=3)
            unmeasured = dict.fromkeys(("kl", "active_units", "objective_se", *SNR_COLUMNS), math.nan)
            full = unmeasured | row | {
                "seed": seed, "step": step, "epoch": epoch, "lr": lr, "batch_grad_sq_norm": math.nan,
                "paper_proxy": math.nan, "random_iterate": math.nan, "bound": math.nan, "seconds": seconds}
            rows.append({key: full[key] for key in METRIC_COLUMNS})
        if self.snr_draws and all(math.isfinite(row["objective"]) for row in rows):
            began = time.perf_counter()
            for t, row in enumerate(rows):
                row.update(self.snr(t))
            self.diagnostics_seconds["snr"] += time.perf_counter() - began
        probes = []
        if step in self.probe_steps and all(math.isfinite(row["objective"]) for row in rows):
            began = time.perf_counter()
            probes = [self.probe(t, step) for t in range(len(self.subject.seeds))]
            self.diagnostics_seconds["probes"] += time.perf_counter() - began
        windows, proxies = self.tracker.read_window(), self.tracker.paper_proxy
        for row, window, proxy in zip(rows, windows, proxies, strict=True):
            row.update(batch_grad_sq_norm=window, paper_proxy=proxy)
        self.probes.extend(probes)
        self.metrics.extend(rows)
        return rows

    def probe(self, t: int, step: int) -> Probe:
        """Smoothness, gradient noise and largest weight of replica t at its current parameters, all drawn
        from one generator seeded by :func:`probe_seed`: the fixed-noise loss's draws, the Lanczos start vector,
        then the gradient draws."""
        seed = probe_seed(self.subject.seeds[t], step)
        generator = torch.Generator().manual_seed(seed)
        with self.subject.one_replica(t):
            with self.subject.probing(t, seed):
                loss, params = self.subject.fixed_noise_loss(t, generator, seed)
                L = smoothness_estimate(loss, params, generator=generator)
                grads = self.subject.gradient_draws(t, generator, seed)
            noise = noise_from_gradients(grads, self.subject.samples, examples_per_row=self.subject.examples_per_row)
        weight_bound = max(p.detach().abs().max().item() for p in self.subject.weights(t))
        return Probe(L=L, noise=noise, weight_bound=weight_bound, seed=self.subject.seeds[t], step=step)

    def snr(self, t: int) -> dict[str, float]:
        """The :data:`SNR_COLUMNS` of replica t at its current parameters, from :attr:`snr_draws` gradient draws
        seeded by :func:`snr_seed`; NaN for a group the subject does not have."""
        seed = snr_seed(self.subject.seeds[t])
        out = dict.fromkeys(SNR_COLUMNS, math.nan)
        with self.subject.one_replica(t):
            groups = self.subject.snr_gradients(t, torch.Generator().manual_seed(seed), seed, self.snr_draws)
            for group, draws in groups.items():
                estimate = gradient_snr(draws)
                out |= {f"snr_{group}": estimate.coord, f"snr_{group}_se": estimate.coord_se,
                        f"snr_norm_{group}": estimate.norm, f"snr_norm_{group}_se": estimate.norm_se}
        return out

    def state(self) -> dict[str, Any]:
        """What a resumed run's recorder goes on from, as a checkpoint holds it (plain values and host tensors): the
        rows and probes so far, the current epoch's running sum of minibatch gradient norms and the last epoch's
        proxy, and the seconds spent. Taken at a recorded step, where the logging window is empty."""
        return {"metrics": [dict(row) for row in self.metrics],
                "probes": [asdict(probe) for probe in self.probes],
                **self.tracker.state_dict(),
                "seconds": time.perf_counter() - self.start,
                "diagnostics_seconds": dict(self.diagnostics_seconds)}

    def restore(self, state: dict[str, Any], step: int) -> None:
        """Go on from the :meth:`state` a run had at ``step``, towards this recorder's :attr:`steps`: its rows, and
        its clock, go on. Its probes are kept at the steps this recorder probes (0, n/2 and n of the new n), as a
        run trained straight to n would have them; where the new middle n/2 fell before ``step`` unprobed, every
        probe is kept (the constants are maxima: more probes err on the safe side)."""
        probes = [Probe(**{**probe, "noise": GradientNoise(**probe["noise"])}) for probe in state["probes"]]
        middle = self.steps // 2
        if middle < step and all(probe.step != middle for probe in probes):
            self.probes = probes
        else:
            self.probes = [probe for probe in probes if probe.step in self.probe_steps]
        self.metrics = [dict(row) for row in state["metrics"]]
        self.tracker.load_state_dict({"epoch_sum": state["epoch_sum"], "proxy": state["proxy"]})
        self.start = time.perf_counter() - state["seconds"]
        self.diagnostics_seconds = dict(state["diagnostics_seconds"])

    def constants(self) -> Constants | None:
        """The constants over every probe so far (None without probes), delta against the subject's floor."""
        if not self.probes:
            return None
        first = self.metrics[0]["step"]
        return constants_from_probes(self.probes, [row for row in self.metrics if row["step"] == first],
                                     self.subject.objective_floor(), min(row["objective"] for row in self.metrics),
                                     self.subject.parameters, self.subject.batch_size, self.subject.samples)

    def summary(self, run: AssessedRun, *, config: dict[str, Any], data: dict[str, Any], interrupted: bool,
                batches_per_epoch: int, gammas: np.ndarray | None = None) -> RunSummary:
        """The run held against the theory: the constants, the assessment of ``run``, and :attr:`metrics` with
        their ``random_iterate`` and ``bound`` columns filled in."""
        constants = self.constants()
        assessment = assess_run(run, self.metrics, constants, batches_per_epoch, gammas)
        self.metrics = assessment.apply(self.metrics)
        for entry in assessment.summary["per_seed"]:  # each seed's own constants, for findings paired by seed
            own = [p for p in self.probes if p.seed == entry["seed"]]
            entry["constants"] = probe_maxima(own) if own else None
            if self.snr_draws:
                entry["snr"] = snr_reading([row for row in self.metrics if row["seed"] == entry["seed"]],
                                           self.snr_draws)
        return RunSummary(config=config, seeds=list(self.subject.seeds), steps=int(self.metrics[-1]["step"]),
                          seconds=time.perf_counter() - self.start,
                          diagnostics_seconds=dict(self.diagnostics_seconds), interrupted=interrupted, data=data,
                          parameters=self.subject.parameters, constants=constants, assessment=assessment.summary,
                          grad_sq_norm_estimator=self.subject.estimator,
                          extras={"snr": snr_reading(self.metrics, self.snr_draws) if self.snr_draws else None})


def snr_reading(metrics: Sequence[dict[str, float]], draws: int) -> dict[str, Any]:
    """The gradient SNR of a run's seeds at their first and last common checkpoints, for its summary: ``draws``,
    and ``start`` and ``end``, each with its ``step`` and every :data:`SNR_COLUMNS` without its ``snr_`` prefix, the
    mean over the seeds (a standard error: that of the mean, from the seeds' own)."""
    steps, _ = seed_matrix(metrics, SNR_COLUMNS[0])
    reading: dict[str, Any] = {"draws": draws}
    for end, index in (("start", 0), ("end", -1)):
        values: dict[str, float] = {"step": steps[index]}
        for column in SNR_COLUMNS:
            at = seed_matrix(metrics, column)[1][:, index]
            values[column.removeprefix("snr_")] = float(
                np.sqrt(np.square(at).sum()) / len(at) if column.endswith("_se") else at.mean())
        reading[end] = values
    return reading

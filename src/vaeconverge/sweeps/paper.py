"""``vaeconverge reproduce --paper``: the studies marked ``paper = true`` (the paper's section 5 protocol, on
CIFAR-100 and CelebA) sized from their data and timed on this device before anything trains.

- Length. A run lasts ``epochs`` epochs (:data:`PAPER_EPOCHS` as published) as the engine counts them: an epoch
  is floor(N / B) batches of a fresh permutation, the tail dropped (``data/batches.py``), so a run is
  ``epochs * floor(N / B)`` steps, N being the data set's training examples read at run time, and the
  epoch-sqrt schedule steps through epochs 0 .. epochs - 1.
- Small data. Where a data set holds fewer examples than the protocol's batch (N < B), each batch is the whole
  data set (B = N, one step per epoch); a line says so.
- Estimate. Each distinct step shape (data set, network, K and B; the activation barely changes a step's cost)
  is timed for :data:`TIMED_STEPS` training steps after :data:`WARMUP_STEPS` on the actual data, with every
  seed of a run, as the engine steps them; a run's estimate is its steps times that, plus its checkpoints, each
  two passes of ``eval_samples`` draws over the N examples (``diagnostics/grad_norms.py``), counted as that many
  steps' worth of examples (their cost per parameter, the replicates' inner products, is left out: seconds per
  checkpoint, against a full-data pass of the real data sets). Runs already finished in the store are not counted.
  On a CPU an estimate above :data:`CPU_LIMIT_SECONDS` is refused unless ``yes``, as soon as the runs timed so
  far exceed it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..config import ConfigError, RunConfig
from ..data import load_dataset
from ..data.local_files import data_root, expected_files, find_local
from ..engine.loop import take_step
from ..engine.recorder import default_eval_points, evaluation_steps
from ..engine.train import build_ensemble, replica_batch_losses, replica_streams
from ..optim import build_optimizer
from ..runtime import computing, resolve_device
from .grid import SweepSpec
from .identity import run_id
from .store import Store

PAPER_EPOCHS = 100  # section 5: every run of both studies trains for 100 epochs
CPU_LIMIT_SECONDS = 2 * 3600  # above this estimate a CPU run is refused without --yes
WARMUP_STEPS, TIMED_STEPS = 1, 3  # the first step pays for allocation and kernel choice; the next are timed


@dataclass(frozen=True)
class RunEstimate:
    """One run's expected wall time on this device: ``training`` for its steps and ``checkpoints`` for its
    full-data evaluations (seconds)."""

    study: str
    label: str
    config: RunConfig
    training: float
    checkpoints: float

    @property
    def seconds(self) -> float:
        """The run's whole expected wall time."""
        return self.training + self.checkpoints


def check_paper_data(specs: Sequence[SweepSpec]) -> None:
    """Refuse, in one line naming where they were looked for, the data sets the studies read that are absent
    (each from its base's ``data_dir``)."""
    wanted = dict.fromkeys((spec.base["data"], spec.base.get("data_dir")) for spec in specs)
    missing = [(name, folder) for name, folder in wanted if find_local(name, folder) is None]
    if missing:
        where = "; ".join(f"{name}: {expected_files(name, folder)[0]}" for name, folder in missing)
        fetch = " and ".join(f"vaeconverge data download {name} --mirror URL" for name, _ in missing)
        roots = ", ".join(dict.fromkeys(str(data_root(folder)) for _, folder in missing))
        raise ConfigError("--data-dir", f"the paper's data are not in {roots} (looked for {where}); fetch them with "
                                        f"{fetch}")


def sized(specs: Sequence[SweepSpec], epochs: int, progress: bool = True
          ) -> tuple[list[SweepSpec], dict[str, torch.Tensor], list[str]]:
    """The studies with every run's batch and steps set from its data (see the module's rules), each data set
    loaded once (CelebA's cache built if need be), and the lines that say where B was capped."""
    if epochs < 1:
        raise ConfigError("--epochs", f"must be at least 1 (got {epochs})")
    check_paper_data(specs)
    data: dict[str, torch.Tensor] = {}
    out, notes = [], []
    for spec in specs:
        name = spec.base["data"]
        if name not in data:
            data[name] = load_dataset(RunConfig.from_dict({**spec.base, "batch_size": 1}), progress).x
        n, batch = len(data[name]), spec.base["batch_size"]
        if n < batch:
            notes.append(f"{spec.name}: {name} holds {n} training examples, fewer than B = {batch}: each batch is "
                         f"the whole data set (B = {n})")
            batch = n
        out.append(dataclasses.replace(spec, base={**spec.base, "batch_size": batch, "steps": epochs * (n // batch)}))
    return out, data, notes


def seconds_per_step(config: RunConfig, x: torch.Tensor) -> float:
    """Wall time of one training step of all ``config``'s replicas on ``x`` (on its device, with the threads the
    engine would choose): the mean of :data:`TIMED_STEPS` after :data:`WARMUP_STEPS`."""
    device = resolve_device(config.device)
    ensemble, chosen = build_ensemble(config, x, device)
    params = ensemble.parameters()
    optimizer = build_optimizer(config.optimizer, params, config.lr, config.momentum, config.adam_betas)
    _, noise, batches = replica_streams(config.replica_seeds, x, config.batch_size, device)
    batch_losses = replica_batch_losses(ensemble, x, batches, noise, config.precision)

    def step() -> None:
        take_step(batch_losses, params, optimizer, ensemble.squared_norms, ensemble.zero_grad)

    with computing(chosen.threads, config.denormals == "flush"):
        for _ in range(WARMUP_STEPS):
            step()
        _wait(device)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            step()
        _wait(device)
        return (time.perf_counter() - start) / TIMED_STEPS


def _wait(device: torch.device) -> None:
    """Let the device finish what was queued, so that the clock reads work done, not work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def checkpoint_steps(config: RunConfig, n: int) -> float:
    """A run's checkpoints in training steps' worth of examples: each evaluates two replicates of
    ``eval_samples`` draws over the n examples."""
    points = config.eval_points or default_eval_points(config.steps, config.batch_size, n, config.eval_samples)
    count = len(evaluation_steps(config.steps, config.eval_every, points))
    return count * 2 * config.eval_samples * n / config.batch_size


def pending_runs(specs: Sequence[SweepSpec], finished: Iterable[str] = ()) -> list[tuple[str, str, RunConfig]]:
    """(study, label, configuration) of every run of ``specs`` not among the ``finished`` run ids, in order."""
    finished = set(finished)
    return [(spec.name, spec.label(config), config) for spec in specs for config in spec.runs()
            if run_id(config) not in finished]


def estimate(runs: Sequence[tuple[str, str, RunConfig]], data: dict[str, torch.Tensor]) -> Iterator[RunEstimate]:
    """The estimate of each of ``runs`` (as :func:`pending_runs` lists them), in turn, each step shape timed once
    (on its data set in ``data``)."""
    timed: dict[tuple, float] = {}
    for study, label, config in runs:
        x = data[config.data]
        key = (config.data, config.model, config.objective, config.samples, config.batch_size, config.seeds)
        if key not in timed:
            timed[key] = seconds_per_step(config, x)
        yield RunEstimate(study, label, config, config.steps * timed[key],
                          checkpoint_steps(config, len(x)) * timed[key])


def finished_runs(store_path: Path) -> set[str]:
    """The ids of the runs a store (if there is one) already holds as done, failed or diverged: a resumed
    reproduce does not train them again."""
    if not store_path.is_file():
        return set()
    with Store(store_path, readonly=True) as store:
        return {run.id for name, _ in store.sweeps() for run in store.runs(name)
                if run.status not in ("queued", "running")}


def duration(seconds: float) -> str:
    """A span of time as a reader takes it in: seconds, minutes, or hours and minutes."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def exceeds(total: float, device: torch.device, yes: bool) -> bool:
    """Whether an estimate of ``total`` seconds is refused: on a CPU, above :data:`CPU_LIMIT_SECONDS`, without
    ``yes``."""
    return device.type == "cpu" and total > CPU_LIMIT_SECONDS and not yes


def check_budget(total: float, device: torch.device, yes: bool, complete: bool = True) -> None:
    """Raise the refusal where :func:`exceeds` says so; ``complete``: every run was timed (else ``total`` is what
    the runs timed so far already take)."""
    if exceeds(total, device, yes):
        raise ConfigError("--paper", f"the runs would take {'about' if complete else 'more than'} {duration(total)} "
                                     f"on this CPU (the limit is {duration(CPU_LIMIT_SECONDS)}); pass --epochs E to "
                                     "shorten them or --yes to run anyway")


def prepare(specs: Sequence[SweepSpec], store_path: Path, epochs: int, device: str | None, yes: bool,
            progress: bool = True) -> list[SweepSpec]:
    """The paper studies sized from their data, after printing each pending run's estimated time on this device as
    it is timed; a missing data set, or on a CPU an estimate above the limit without ``yes``, is a ConfigError
    (raised as soon as the runs timed so far exceed it, sparing the others' timing)."""
    say = partial(print, flush=True)  # each line as it comes: timing a conv network on a CPU takes minutes
    specs, data, notes = sized(specs, epochs, progress)
    resolved = resolve_device(device or "auto")
    runs = pending_runs(specs, finished_runs(store_path))
    for line in notes:
        say(line)
    if not runs:
        say("every run of these studies is already in the store")
        return specs
    seeds = "/".join(map(str, sorted({len(config.replica_seeds) for _, _, config in runs})))
    say(f"{len(runs)} runs of {epochs} epoch{'s' if epochs > 1 else ''}, {seeds} seeds each, one after another on "
        f"{resolved.type} (each model and K timed over {TIMED_STEPS} steps after {WARMUP_STEPS} warm-up):")
    study_width, label_width = (max(len(run[i]) for run in runs) for i in (0, 1))
    total = 0.0
    for count, e in enumerate(estimate(runs, data), 1):
        c = e.config
        say(f"  {e.study:<{study_width}}  {e.label:<{label_width}}  {c.model} K={c.samples:<3} B={c.batch_size:<3}"
            f" {c.steps:>7,} steps  {duration(e.training):>12}  (+ checkpoints {duration(e.checkpoints)})")
        total += e.seconds
        if count < len(runs) and exceeds(total, resolved, yes):
            say(f"estimated total: more than {duration(total)} (the other {len(runs) - count} runs not timed)")
            check_budget(total, resolved, yes, complete=False)
    say(f"estimated total: {duration(total)}")
    check_budget(total, resolved, yes)
    return specs

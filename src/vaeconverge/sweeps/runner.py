"""The sweep driver: expands a specification, queues its runs in the store, hands the pending ones to an
executor and writes each outcome as it arrives. Running it again after any interruption completes the sweep:
finished runs are kept, and runs that were in flight start over. An interruption (Ctrl-C) stops the sweep: the
runs in flight, cut short, go back to the queue, never stored as finished, and the KeyboardInterrupt goes on to
the caller."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress

from ..config import RunConfig
from ..engine.loop import Progress
from .executors import Executor
from .grid import Config, SweepSpec
from .identity import run_id
from .store import Outcome, Store, StoreError

Finished = Callable[[Config, Outcome], None]  # told of each run that finishes (e.g. to log it to a tracker)


def check_data(specs: Sequence[SweepSpec]) -> None:
    """Load each distinct data set the sweeps' VAE runs read, once, here: bad data is then one error before any
    run starts, not the same failure in every run. (For executors whose workers read the data where this
    machine cannot, skip it.)"""
    from ..data import load_dataset

    seen = set()
    for spec in specs:
        for config in spec.runs():
            if isinstance(config, RunConfig):
                key = (config.data, config.data_dir, config.synthetic, config.likelihood, config.batch_size)
                if key not in seen:
                    seen.add(key)
                    load_dataset(config, progress=False)


def run_sweep(spec: SweepSpec, store: Store, executor: Executor, progress: bool = True,
              retry_failed: bool = False, finished: Sequence[Finished] = ()) -> dict[str, int]:
    """Run every configuration of ``spec`` that ``store`` has not finished; returns the counts by status."""
    return run_sweeps([spec], store, executor, progress, retry_failed, finished)[spec.name]


def run_sweeps(specs: Sequence[SweepSpec], store: Store, executor: Executor, progress: bool = True,
               retry_failed: bool = False, finished: Sequence[Finished] = ()) -> dict[str, dict[str, int]]:
    """Run the unfinished configurations of several sweeps as one queue, so that the executor's workers stay busy
    across the sweeps' boundaries (a run shared by two sweeps trains once); returns each sweep's counts by status. Each
    of ``finished`` is called with a finished run's configuration and outcome once it is stored."""
    runs: dict[str, Config] = {}
    labels: dict[str, str] = {}  # each run's axis values, for the progress lines
    for spec in specs:
        own = [(run_id(config), config) for config in spec.runs()]
        store.add_sweep(spec.name, spec.source, own)
        if retry_failed:
            store.requeue_failed(spec.name)
        runs.update(own)
        labels.update((identifier, spec.label(config) if len(specs) == 1 else f"{spec.name}: {spec.label(config)}")
                      for identifier, config in own)
    pending = list({identifier: config for spec in specs for identifier, config in store.pending(spec.name)}.items())
    desc = f"sweep {specs[0].name}" if len(specs) == 1 else f"{len(specs)} sweeps"
    with Progress(len(runs), desc, "run", progress, initial=len(runs) - len(pending)) as bar:
        failures: Counter[str] = Counter()
        outcomes = executor.run(pending, store.mark_running)
        try:
            for outcome in outcomes:
                if outcome.summary is not None and outcome.summary.get("interrupted"):
                    raise KeyboardInterrupt  # cut short by a Ctrl-C the run caught itself: it is not finished
                store.record(outcome)
                if outcome.status == "done":
                    for report in finished:
                        report(runs[outcome.run_id], outcome)
                bar.advance()
                if outcome.status in ("failed", "diverged"):
                    failures[outcome.status] += 1
                bar.report(f"{bar.done}/{len(runs)} runs; {labels[outcome.run_id]} {outcome.status} in "
                           f"{outcome.seconds:.1f}s", **failures)
        except BaseException:
            _stop(outcomes, store)
            raise
    return {spec.name: store.counts(spec.name) for spec in specs}


def _stop(outcomes: object, store: Store) -> None:
    """After an interruption or an error: stop the executor's runs (closing its generator cancels them) and queue
    again the runs that were in flight, so that none of them reads as finished or running."""
    close = getattr(outcomes, "close", None)
    try:
        if close is not None:
            close()
    finally:
        with suppress(StoreError):  # a damaged store: the error on its way out says so
            store.requeue_running()

"""The sweep driver: expands a specification, queues its runs in the store, hands the pending ones to an
executor and writes each outcome as it arrives. Running it again after any interruption completes the sweep:
finished runs are kept, and runs that were in flight start over."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tqdm.auto import tqdm

from .executors import Executor
from .grid import Config, SpecError, SweepSpec
from .identity import run_id
from .store import Store


def run_sweep(spec: SweepSpec, store: Store, executor: Executor, progress: bool = True,
              retry_failed: bool = False) -> dict[str, int]:
    """Run every configuration of ``spec`` that ``store`` has not finished; returns the counts by status."""
    return run_sweeps([spec], store, executor, progress, retry_failed)[spec.name]


def run_sweeps(specs: Sequence[SweepSpec], store: Store, executor: Executor, progress: bool = True,
               retry_failed: bool = False) -> dict[str, dict[str, int]]:
    """Run the unfinished configurations of several sweeps as one queue, so that the executor's workers stay busy
    across the sweeps' boundaries (a run shared by two sweeps trains once); returns each sweep's counts by status."""
    runs: dict[str, Config] = {}
    for spec in specs:
        own = [(run_id(config), config) for config in spec.runs()]
        seen: dict[str, int] = {}
        for position, (identifier, _) in enumerate(own):
            if identifier in seen:
                raise SpecError(f"sweep {spec.name}", f"runs {seen[identifier] + 1} and {position + 1} have the same "
                                                      "configuration (a repeated axis value?)")
            seen[identifier] = position
        store.add_sweep(spec.name, spec.source, own)
        if retry_failed:
            store.requeue_failed(spec.name)
        runs.update(own)
    pending = list({identifier: config for spec in specs for identifier, config in store.pending(spec.name)}.items())
    desc = f"sweep {specs[0].name}" if len(specs) == 1 else f"{len(specs)} sweeps"
    with tqdm(total=len(runs), initial=len(runs) - len(pending), desc=desc, unit="run",
              disable=not progress or None) as bar:
        failures: Counter[str] = Counter()
        for outcome in executor.run(pending, store.mark_running):
            store.record(outcome)
            bar.update()
            if outcome.status in ("failed", "diverged"):
                failures[outcome.status] += 1
                bar.set_postfix(failures)
    return {spec.name: store.counts(spec.name) for spec in specs}

"""The sweep driver: expands a specification, queues its runs in the store, hands the pending ones to an
executor and writes each outcome as it arrives. Running it again after any interruption completes the sweep:
finished runs are kept, and runs that were in flight start over."""

from __future__ import annotations

from tqdm.auto import tqdm

from .executors import Executor
from .grid import SpecError, SweepSpec
from .identity import run_id
from .store import FINISHED, Store


def run_sweep(spec: SweepSpec, store: Store, executor: Executor, progress: bool = True,
              retry_failed: bool = False) -> dict[str, int]:
    """Run every configuration of ``spec`` that ``store`` has not finished; returns the counts by status."""
    runs = [(run_id(config), config) for config in spec.runs()]
    seen: dict[str, int] = {}
    for position, (identifier, _) in enumerate(runs):
        if identifier in seen:
            raise SpecError(f"sweep {spec.name}", f"runs {seen[identifier] + 1} and {position + 1} have the same "
                                                  "configuration (a repeated axis value?)")
        seen[identifier] = position
    store.add_sweep(spec.name, spec.source, runs)
    if retry_failed:
        store.requeue_failed(spec.name)
    pending = store.pending(spec.name)
    finished = sum(store.counts(spec.name)[status] for status in FINISHED)
    with tqdm(total=len(runs), initial=finished, desc=f"sweep {spec.name}", unit="run",
              disable=not progress or None) as bar:
        for outcome in executor.run(pending, store.mark_running):
            store.record(outcome)
            bar.update()
            counts = store.counts(spec.name)
            bar.set_postfix({status: counts[status] for status in ("failed", "diverged") if counts[status]})
    return store.counts(spec.name)

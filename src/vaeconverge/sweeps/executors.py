"""Where a sweep's runs execute: in the driver's own process, or in a local pool of worker processes.

An executor takes (run id, configuration) tasks and yields each run's :class:`Outcome` as it finishes; it never
touches the store, which only the driver writes. A cluster executor (Ray, in
:mod:`.ray_executor`) fits the same interface.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from ..bbvi.config import BBVIConfig
from ..runtime import available_cores
from .grid import Config
from .store import Outcome

Task = tuple[str, Config]


class Executor(Protocol):
    """Runs tasks; ``started(run_id)`` is called as each one is handed out, before its outcome is yielded."""

    def run(self, tasks: Iterable[Task], started: Callable[[str], None]) -> Iterator[Outcome]: ...


def execute(task: Task, threads: int | None = None) -> Outcome:
    """Train one run (a VAE, or BBVI) and turn whatever happens into an :class:`Outcome` (the worker's whole job);
    a run cut short by an interrupt is no outcome: it raises KeyboardInterrupt, and the sweep stops."""
    from ..bbvi import train as train_bbvi
    from ..data import load_dataset
    from ..engine import TrainingDiverged, train

    run_id, config = task
    if threads is not None and config.threads is None:
        config = dataclasses.replace(config, threads=threads)
    start = time.perf_counter()
    try:
        if isinstance(config, BBVIConfig):
            result = train_bbvi(config, progress=False)
        else:
            result = train(config, load_dataset(config, progress=False), progress=False)
    except TrainingDiverged as exc:
        return Outcome(run_id, "diverged", time.perf_counter() - start, error=str(exc), diverged_step=exc.step)
    except Exception as exc:  # a failing run is recorded, and the sweep goes on
        return Outcome(run_id, "failed", time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")
    if result.summary.get("interrupted"):  # the training loop caught a Ctrl-C and stopped early: not finished
        raise KeyboardInterrupt
    return Outcome(run_id, "done", time.perf_counter() - start, summary=result.summary, metrics=result.metrics)


class InProcess:
    """Runs one task after another in this process."""

    def run(self, tasks: Iterable[Task], started: Callable[[str], None]) -> Iterator[Outcome]:
        for task in tasks:
            started(task[0])
            yield execute(task)


class ProcessPool:
    """``jobs`` worker processes (spawned, so nothing of the driver's state leaks in); each run gets
    cores / jobs intra-op threads unless its configuration says otherwise. At most ``jobs`` runs are handed
    out at a time, so the store's ``running`` rows are the runs actually running."""

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError(f"--jobs must be at least 1 (got {jobs})")
        self.jobs = jobs
        self.threads = max(1, available_cores() // jobs)

    def run(self, tasks: Iterable[Task], started: Callable[[str], None]) -> Iterator[Outcome]:
        with futures.ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn")) as pool:
            yield from run_bounded(tasks, started, lambda task: pool.submit(execute, task, self.threads), self.jobs,
                                   _outcome)


def run_bounded(tasks: Iterable[Task], started: Callable[[str], None],
                submit: Callable[[Task], futures.Future[Outcome]], slots: int,
                outcome: Callable[[futures.Future[Outcome], str], Outcome]) -> Iterator[Outcome]:
    """Keep at most ``slots`` tasks ``submit``ted at a time and yield ``outcome(future, run_id)`` as each
    finishes; an executor is a ``submit`` (to a process pool, to a Ray cluster) and an ``outcome``."""
    queue = iter(tasks)
    running: dict[futures.Future[Outcome], str] = {}
    try:
        while True:
            for task in queue:
                started(task[0])
                running[submit(task)] = task[0]
                if len(running) == slots:
                    break
            if not running:
                return
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                yield outcome(future, running.pop(future))
    except BaseException:
        for future in running:
            future.cancel()
        raise


def _outcome(future: futures.Future[Outcome], run_id: str) -> Outcome:
    """The run's outcome, or a failure saying why its worker returned none (it died, or could not pickle)."""
    try:
        return future.result()
    except futures.process.BrokenProcessPool:
        raise  # the pool is gone: stop the sweep; a new invocation resumes it
    except Exception as exc:
        return Outcome(run_id, "failed", 0.0, error=f"worker error: {type(exc).__name__}: {exc}")


def build_executor(jobs: int) -> Executor:
    """In-process for one job, a process pool for more."""
    return InProcess() if jobs == 1 else ProcessPool(jobs)

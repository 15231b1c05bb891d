"""Where a sweep's runs execute: in the driver's own process, or in a local pool of worker processes.

An executor takes (run id, configuration) tasks and yields each run's :class:`Outcome` as it finishes; it never
touches the store, which only the driver writes. A cluster executor (Ray, in
:mod:`.ray_executor`) fits the same interface.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from ..bbvi.config import BBVIConfig
from ..runtime import available_cores, core_budget
from .grid import Config
from .store import Outcome

Task = tuple[str, Config]


class Executor(Protocol):
    """Runs tasks; ``started(run_id)`` is called as each one is handed out, before its outcome is yielded."""

    def run(self, tasks: Iterable[Task], started: Callable[[str], None]) -> Iterator[Outcome]: ...


def execute(task: Task, cores: int | None = None) -> Outcome:
    """Train one run (a VAE, or BBVI) on at most ``cores`` cores (its share of the machine; threads are chosen
    within it unless its configuration names them) and turn whatever happens into an :class:`Outcome` (the
    worker's whole job); a run cut short by an interrupt is no outcome: it raises KeyboardInterrupt, and the
    sweep stops."""
    from ..bbvi import train as train_bbvi
    from ..data import load_dataset
    from ..engine import TrainingDiverged, train

    run_id, config = task
    start = time.perf_counter()
    try:
        with core_budget(cores) if cores is not None else contextlib.nullcontext():
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
    at most cores / jobs intra-op threads unless its configuration says otherwise. At most ``jobs`` runs are handed
    out at a time, so the store's ``running`` rows are the runs actually running.

    Each worker is a pool of its own, so that one dying (killed, out of memory) breaks no other run: its run is
    recorded failed, saying how the worker died, not retried (``--retry-failed`` runs it again), and a fresh
    worker takes the next run. Workers end when the driver dies, even by SIGKILL."""

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError(f"--jobs must be at least 1 (got {jobs})")
        self.jobs = jobs
        self.cores = max(1, available_cores() // jobs)

    def run(self, tasks: Iterable[Task], started: Callable[[str], None]) -> Iterator[Outcome]:
        idle: list[futures.ProcessPoolExecutor] = []  # workers waiting for a run
        held: dict[futures.Future[Outcome], futures.ProcessPoolExecutor] = {}  # each run in flight's worker
        with contextlib.ExitStack() as workers:  # leaving it shuts every worker down

            def submit(task: Task) -> futures.Future[Outcome]:
                pool = idle.pop() if idle else workers.enter_context(_worker())
                try:
                    future = pool.submit(execute, task, self.cores)
                except futures.process.BrokenProcessPool:  # its worker died between two runs: start another
                    pool.shutdown()
                    return submit(task)
                held[future] = pool
                return future

            def outcome(future: futures.Future[Outcome], run_id: str) -> Outcome:
                pool = held.pop(future)
                if isinstance(future.exception(), futures.process.BrokenProcessPool):
                    return Outcome(run_id, "failed", 0.0, error=_death(pool))
                idle.append(pool)
                return _outcome(future, run_id)

            yield from run_bounded(tasks, started, submit, self.jobs, outcome)


# A worker's first code: it ends the worker when its driver dies, even by SIGKILL, which leaves the driver no
# chance to shut its pool down (the worker would wait for work forever). On Linux the kernel kills it at once
# (prctl 1, PR_SET_PDEATHSIG); elsewhere a thread checks every second whether it has been orphaned. It is run
# by exec, not as a function of this package, which the worker would import first (torch: seconds, on a busy
# machine many, unguarded).
_END_WITH_DRIVER = """
import ctypes, os, signal, sys, threading, time
linux = sys.platform == "linux" and ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0) == 0
if os.getppid() != driver:  # the driver died before the worker could ask to die with it
    os._exit(1)
def watch():
    while os.getppid() == driver:
        time.sleep(1)
    os._exit(1)
if not linux:
    threading.Thread(target=watch, daemon=True).start()
"""


def _worker() -> futures.ProcessPoolExecutor:
    """A pool of one spawned worker process, which ends when this driver does."""
    return futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=exec,
                                       initargs=(_END_WITH_DRIVER, {"driver": os.getpid()}))


def _death(pool: futures.ProcessPoolExecutor) -> str:
    """Why a run failed whose worker, the one process of ``pool``, died under it: the worker's pid and how it
    ended (SIGKILL is also how the out-of-memory killer ends a process)."""
    (worker,) = pool._processes.values()  # the pool's own record of its worker, which shutdown drops
    pool.shutdown()  # joins the worker, so its exit status is known
    code = worker.exitcode
    if code is not None and code < 0:
        how = f"killed by signal {-code}, {signal.strsignal(-code)}"
    else:
        how = f"exit status {code}"
    return f"its worker process {worker.pid} died ({how}) while the run was in flight"


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
    """The run's outcome, or a failure saying why its worker returned none (its outcome would not pickle, say)."""
    try:
        return future.result()
    except Exception as exc:
        return Outcome(run_id, "failed", 0.0, error=f"worker error: {type(exc).__name__}: {exc}")


def build_executor(jobs: int) -> Executor:
    """In-process for one job, a process pool for more."""
    return InProcess() if jobs == 1 else ProcessPool(jobs)

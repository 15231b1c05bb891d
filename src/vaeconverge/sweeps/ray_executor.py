"""A sweep's runs as Ray tasks, on a local Ray instance or a cluster (``vaeconverge sweep --executor ray``).

Each run (one configuration with all its seeds) is one task reserving ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs, and trains within ``cpus_per_run`` cores, as the process pool bounds its workers', so
that a run's numbers do not depend on the executor. Tasks return their :class:`Outcome`; the
driver alone writes the store. A task whose worker dies (killed, out of memory, its node lost) is run again by
Ray up to ``retries`` times, then recorded failed with the reason; a run that fails or diverges in training
returns that as its outcome and is not retried. Ray is optional: ``pip install 'vaeconverge[ray]'``.
"""

from __future__ import annotations

import concurrent.futures as futures
import math
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType

from ..config import ConfigError
from ..runtime import available_cores
from .executors import Task, _outcome, execute, run_bounded
from .store import Outcome

INSTALL = "pip install 'vaeconverge[ray]'"


def require_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`ConfigError` naming ``--executor`` with the install command."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor", f"ray needs the ray package, which is not installed ({INSTALL})") from None
    return ray


class RayExecutor:
    """Runs tasks on the Ray cluster at ``address`` (``"auto"``: the one this machine belongs to), or on a Ray
    instance started here on every core when ``address`` is None; reuses Ray if it is already initialised.
    At most as many runs are handed out as the cluster's nodes hold at once, so the store's ``running`` rows
    are the runs actually running."""

    def __init__(self, address: str | None = None, cpus_per_run: int = 1, gpus_per_run: float = 0,
                 retries: int = 1) -> None:
        if cpus_per_run < 1:
            raise ConfigError("--cpus-per-run", f"must be at least 1 (got {cpus_per_run})")
        if gpus_per_run < 0:
            raise ConfigError("--gpus-per-run", f"must be at least 0 (got {gpus_per_run})")
        if retries < 0:
            raise ConfigError("--retries", f"must be at least 0 (got {retries})")
        self.ray = require_ray()
        if not self.ray.is_initialized():
            try:
                if address is None:
                    self.ray.init(num_cpus=available_cores(), include_dashboard=False)
                else:
                    self.ray.init(address=address)
            except ConnectionError as exc:
                raise ConfigError("--address", f"no Ray cluster at {address} ({exc})") from None
        self.cpus_per_run = cpus_per_run
        self.retries = retries
        self.slots = _slots(self.ray.nodes(), cpus_per_run, gpus_per_run)
        self._task = self.ray.remote(execute).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run,
                                                      max_retries=retries)

    def run(self, tasks: Iterable[Task], started: Callable[[str], None]) -> Iterator[Outcome]:
        submitted: dict[futures.Future[Outcome], object] = {}  # each future's ObjectRef, to cancel it

        def submit(task: Task) -> futures.Future[Outcome]:
            reference = self._task.remote(task, self.cpus_per_run)
            future = reference.future()
            submitted[future] = reference
            return future

        try:
            yield from run_bounded(tasks, started, submit, self.slots, self._outcome)
        except BaseException:
            for future, reference in submitted.items():
                if not future.done():
                    self.ray.cancel(reference, force=True)
            raise

    def _outcome(self, future: futures.Future[Outcome], run_id: str) -> Outcome:
        """The run's outcome; a worker lost on every attempt makes the run failed, saying so."""
        try:
            return future.result()
        except self.ray.exceptions.RayTaskError:  # raised by the task itself (execute keeps training's own)
            return _outcome(future, run_id)
        except self.ray.exceptions.RayError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            return Outcome(run_id, "failed", 0.0, error=f"its worker died on every attempt ({self.retries + 1}): "
                                                        f"{type(exc).__name__}: {reason}")


def _slots(nodes: list[dict], cpus: int, gpus: float) -> int:
    """How many runs of ``cpus`` CPUs and ``gpus`` GPUs the alive ``nodes`` (``ray.nodes()``) hold at once."""
    def fits(resources: dict[str, float]) -> int:
        by_gpu = math.floor(resources.get("GPU", 0) / gpus) if gpus else math.inf
        return int(min(resources.get("CPU", 0) // cpus, by_gpu))

    alive = [node["Resources"] for node in nodes if node["Alive"]]
    slots = sum(fits(resources) for resources in alive)
    if slots == 0:
        held = "; ".join(f"{r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs" for r in alive) or "none alive"
        option = "--gpus-per-run" if gpus and all(r.get("CPU", 0) >= cpus for r in alive) else "--cpus-per-run"
        raise ConfigError(option, f"no node of the Ray cluster holds a run of {cpus} CPUs and {gpus:g} GPUs "
                                  f"(its nodes: {held})")
    return slots

"""The thread policy (engine/plan.py, runtime.py): runs take the cores other processes leave idle (a single small
replica one thread); vectorised replicas' numbers do not depend on the count; a sweep's share of the machine caps
it."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace

import pytest

from vaeconverge import RunConfig, runtime
from vaeconverge.data import load_dataset
from vaeconverge.engine import plan as plan_module
from vaeconverge.engine import train
from vaeconverge.engine.plan import LOOP_FLOPS, plan

SMALL, LARGE = LOOP_FLOPS / 100, LOOP_FLOPS * 10


class FakeLoad:
    """A load sample that reports a fixed number of idle cores."""

    def __init__(self, idle: int) -> None:
        self.idle = idle

    def idle_cores(self) -> int:
        return self.idle


def test_vectorised_replicas_compute_the_same_numbers_on_one_thread_and_on_two():
    """What lets the thread count follow the machine's load: every metric of a 3-seed run, compared with ==."""
    config = RunConfig(data="digits", hidden=64, batch_size=32, steps=60, seeds=(0, 1, 2), eval_every=30,
                       eval_samples=2, constants=False)
    dataset = load_dataset(config)
    one, two = (train(replace(config, threads=t), dataset, progress=False) for t in (1, 2))
    assert one.summary["vectorised"] and two.summary["vectorised"]
    assert (one.summary["threads"], two.summary["threads"]) == (1, 2)
    def numbers(result):  # repr: NaN equals NaN, and floats compare bit for bit
        return [repr({k: v for k, v in row.items() if k != "seconds"}) for row in result.metrics]

    assert numbers(one) == numbers(two)


@pytest.mark.parametrize("idle", [1, 2])
def test_runs_take_the_idle_cores_but_a_single_small_replica_takes_one(idle):
    load = FakeLoad(idle)
    assert plan(SMALL, 3, load=load) == plan_module.Plan(vectorised=True, threads=idle)
    assert plan(SMALL, 1, load=load).threads == 1  # one small replica: one thread, whatever the load
    assert plan(LARGE, 1, load=load) == plan_module.Plan(vectorised=False, threads=idle)
    assert plan(LARGE, 3, load=load) == plan_module.Plan(vectorised=False, threads=idle)
    assert plan(SMALL, 3, loop=True, load=load) == plan_module.Plan(vectorised=False, threads=idle)
    assert plan(SMALL, 3, requested_threads=5, load=load).threads == 5


def test_a_core_budget_caps_the_cores_and_nests():
    cores = runtime.available_cores()
    with runtime.core_budget(1):
        assert runtime.available_cores() == 1
        assert plan(LARGE, 2).threads == 1
        with runtime.core_budget(cores + 5):
            assert runtime.available_cores() == 1
    assert runtime.available_cores() == cores


@pytest.mark.parametrize(("others", "own", "idle"), [(0, 0, 2), (40, 0, 2), (60, 0, 1), (100, 0, 1),
                                                      (200, 0, 1), (60, 100, 1), (0, 100, 2)])
def test_idle_cores_count_only_what_other_processes_used(monkeypatch, others, own, idle):
    """Over 100 ticks of 2 CPUs: a core is taken when others used half of it or more; this process's own time
    (``own``) is not load."""
    monkeypatch.setattr(runtime, "_allowed_cpus", lambda: [0, 1])
    readings = iter([(0, 0, 0), (others + own, 200, own)])  # busy, total, own ticks
    monkeypatch.setattr(runtime.LoadSample, "_ticks", lambda self: next(readings))
    monkeypatch.setattr(runtime, "LOAD_WINDOW", 0.0)
    assert runtime.LoadSample().idle_cores() == idle


def test_unreadable_proc_counts_every_core_free(monkeypatch):
    monkeypatch.setattr(runtime.LoadSample, "_ticks", lambda self: None)
    assert runtime.LoadSample().idle_cores() == runtime.available_cores()


@pytest.mark.skipif(runtime.available_cores() < 2 or not sys.platform.startswith("linux"),
                    reason="needs two cores and Linux's /proc")
def test_a_busy_process_takes_a_core_from_the_sample():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert runtime.LoadSample().idle_cores() <= runtime.available_cores() - 1
    finally:
        spinner.kill()
        spinner.wait()

"""The thread policy (engine/plan.py, runtime.py): runs take the cores other processes leave idle (a single small
replica one thread); vectorised replicas' numbers do not depend on the count; a sweep's share of the machine caps
it."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from vaeconverge import RunConfig, runtime
from vaeconverge.data import load_dataset
from vaeconverge.engine import plan as plan_module
from vaeconverge.engine import train
from vaeconverge.engine.plan import LOOP_FLOPS, plan

SMALL, LARGE = LOOP_FLOPS / 100, LOOP_FLOPS * 10
train_module = importlib.import_module("vaeconverge.engine.train")  # the package exports its function as train


class FakeLoad:
    """A load sample that reports a fixed number of idle cores."""

    def __init__(self, idle: int) -> None:
        self.idle = idle

    def idle_cores(self) -> int:
        return self.idle


@pytest.mark.parametrize("measured", [{"constants": False}, {"constants": True, "snr": True}],
                         ids=["checkpoints", "probes-and-snr"])
def test_vectorised_replicas_compute_the_same_numbers_on_one_thread_and_on_two(measured):
    """What lets the thread count follow the machine's load: every metric of a 3-seed run, compared with ==, the
    per-replica measurements (constants probes, SNR, posterior usage) too."""
    config = RunConfig(data="digits", hidden=64, batch_size=32, steps=60, seeds=(0, 1, 2), eval_every=30,
                       eval_samples=2, **measured)
    dataset = load_dataset(config)
    one, two = (train(replace(config, threads=t), dataset, progress=False) for t in (1, 2))
    assert one.summary["vectorised"] and two.summary["vectorised"]
    assert (one.summary["threads"], two.summary["threads"]) == (1, 2)
    def numbers(result):  # repr: NaN equals NaN, and floats compare bit for bit
        return [repr({k: v for k, v in row.items() if k != "seconds"}) for row in result.metrics]

    assert numbers(one) == numbers(two)
    assert repr(one.summary["constants"]) == repr(two.summary["constants"])


@pytest.mark.parametrize("idle", [1, 2])
def test_runs_take_the_idle_cores_but_a_single_small_replica_takes_one(idle):
    load = FakeLoad(idle)
    chosen = {"threads": idle, "follows_load": True}
    assert plan(SMALL, 3, load=load) == plan_module.Plan(vectorised=True, **chosen)
    # one small replica: one thread, whatever the load, now or later
    assert plan(SMALL, 1, load=load) == plan_module.Plan(vectorised=True, threads=1, follows_load=False)
    assert plan(LARGE, 1, load=load) == plan_module.Plan(vectorised=False, **chosen)
    assert plan(LARGE, 3, load=load) == plan_module.Plan(vectorised=False, **chosen)
    assert plan(SMALL, 3, loop=True, load=load) == plan_module.Plan(vectorised=False, **chosen)
    assert plan(SMALL, 3, requested_threads=5, load=load) == plan_module.Plan(vectorised=True, threads=5)


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


class ScriptedLoad:
    """Load samples whose idle cores follow a script, one entry per sample read, the last repeated."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.read = script, 0

    def __call__(self) -> FakeLoad:
        idle = self.script[min(self.read, len(self.script) - 1)]
        self.read += 1
        return FakeLoad(idle)


def test_the_follower_changes_the_count_once_two_looks_in_a_row_agree():
    clock = [0.0]
    # samples: the follower's first, then one per look; a look reads the sample taken at the look before
    load = ScriptedLoad([1, 1, 2, 1, 1, 2, 2, 2])
    with runtime.intra_op_threads(2):
        follower = runtime.LoadFollower(2, sample=load, clock=lambda: clock[0])
        assert follower.poll(1) is None  # not yet time to look
        seen = []
        for step in range(2, 9):
            clock[0] += runtime.RECHECK_SECONDS
            seen.append((follower.poll(step), torch.get_num_threads()))
    # looks read 1 (wait), 1 (agreed: 1 thread), 2 (wait), 1 (back, nothing), 1, 2 (wait), 2 (agreed: 2 threads)
    assert seen == [(None, 2), (1, 1), (None, 1), (None, 1), (None, 1), (None, 1), (2, 2)]
    assert follower.changes == [(3, 1), (8, 2)]


def test_leaving_the_follower_sets_the_largest_count_it_used():
    """So that an enclosing flush_denormals, leaving, reaches every pool thread the run used."""
    clock = [0.0]
    with runtime.intra_op_threads(1):
        with runtime.LoadFollower(1, sample=ScriptedLoad([2]), clock=lambda: clock[0]) as follower:
            for step in (1, 2):
                clock[0] += runtime.RECHECK_SECONDS
                follower.poll(step)
            assert follower.changes == [(2, 2)]
            torch.set_num_threads(1)  # as a later look at a busier machine would
        assert torch.get_num_threads() == 2


def test_a_run_whose_thread_count_follows_a_changing_load_computes_the_same_numbers(monkeypatch):
    """Vectorised replicas under a load that comes and goes: the count changes mid-run (and the summary lists
    each change), every metric equals the run's on a fixed count."""
    config = RunConfig(data="digits", hidden=64, batch_size=32, steps=40, seeds=(0, 1, 2), eval_every=20,
                       eval_samples=2, constants=False)
    dataset = load_dataset(config)
    fixed = train(replace(config, threads=2), dataset, progress=False)
    load = ScriptedLoad([2, 2] + [1, 1, 1, 2, 2, 2] * 10)
    monkeypatch.setattr(runtime, "LoadSample", load)
    monkeypatch.setattr(runtime, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(train_module, "LoadSample", load)
    followed = train(config, dataset, progress=False)
    assert followed.summary["threads"] == 2 and fixed.summary["thread_changes"] == []
    changes = followed.summary["thread_changes"]
    assert len(changes) >= 4 and [count for _, count in changes[:2]] == [1, 2]
    assert all(0 < step <= config.steps for step, _ in changes)

    def numbers(result):
        return [repr({k: v for k, v in row.items() if k != "seconds"}) for row in result.metrics]

    assert numbers(followed) == numbers(fixed)

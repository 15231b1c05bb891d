"""The training loop: every optimizer and objective trains through the same loop; seeds reproduce runs."""

from __future__ import annotations

import dataclasses
import math
import resource
import subprocess
import sys

import pytest
import torch

from vaeconverge import runtime
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.engine import train
from vaeconverge.engine.recorder import default_eval_points, evaluation_steps

LEARNING_RATES = {"sgd": 0.05, "adam": 3e-3, "adam-defossez": 3e-3, "amsgrad": 3e-3, "rmsprop": 1e-3,
                  "adagrad": 3e-2}


def small_run(**overrides) -> RunConfig:
    base = {"data": "digits", "model": "mlp", "hidden": 32, "depth": 1, "latent_dim": 4, "batch_size": 32,
            "steps": 300, "eval_every": 100, "eval_samples": 2}
    return RunConfig(**{**base, **overrides}).validate()


@pytest.mark.parametrize("optimizer", sorted(LEARNING_RATES))
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_every_optimizer_and_objective_lowers_the_full_objective(optimizer, objective) -> None:
    config = small_run(optimizer=optimizer, lr=LEARNING_RATES[optimizer], objective=objective,
                       samples=3 if objective == "iwae" else 1)
    result = train(config, load_dataset(config), progress=False)
    first, last = result.metrics[0], result.metrics[-1]
    assert [row["step"] for row in result.metrics] == [0, 100, 200, 300]
    assert last["objective"] < first["objective"] - 0.5
    assert math.isfinite(last["grad_sq_norm"]) and last["grad_sq_norm"] > 0
    assert last["epoch"] == 300 // (1797 // 32)


def test_iwae_with_more_samples_reports_a_tighter_bound() -> None:
    """Same trained weights, evaluated by IWAE_K: the reported objective (negative bound) falls with K."""
    config = small_run(objective="iwae", samples=1, steps=200, eval_samples=8, constants=False)
    values = []
    for k in (1, 10, 50):
        result = train(dataclasses.replace(config, samples=k, steps=1), load_dataset(config), progress=False)
        values.append(result.metrics[0]["objective"])  # at initialisation: identical weights for all K
    assert values[0] > values[1] > values[2]


def comparable(rows: list[dict[str, float]]) -> list[dict[str, float | None]]:
    """Metrics without wall-clock times, NaN as None so that equal runs compare equal."""
    return [{k: None if math.isnan(v) else v for k, v in r.items() if k != "seconds"} for r in rows]


def test_same_seed_same_numbers_and_seed_matters() -> None:
    config = small_run(steps=120, eval_every=40, schedule="sqrt", lr=0.01)
    data = load_dataset(config)
    a = comparable(train(config, data, progress=False).metrics)
    b = comparable(train(config, data, progress=False).metrics)
    c = comparable(train(dataclasses.replace(config, seed=1), data, progress=False).metrics)
    assert a == b
    assert a[-1]["objective"] != c[-1]["objective"]


def test_the_paper_proxy_is_reported_per_epoch_and_exceeds_nothing_it_should_not() -> None:
    config = small_run(steps=150, eval_every=50)
    result = train(config, load_dataset(config), progress=False)
    proxies = [row["paper_proxy"] for row in result.metrics]
    assert math.isnan(proxies[0]) and math.isnan(proxies[1])  # no epoch (56 batches) finished by step 50
    assert all(p > 0 for p in proxies[2:])


@pytest.mark.parametrize(("steps", "batch_size", "expected"), [(100, 64, 6), (12_000, 64, 11), (200_000, 64, 40)])
def test_default_checkpoints_follow_the_budget(steps, batch_size, expected) -> None:
    """The default number of checkpoints grows with the examples training sees (5% of them on the full-data passes,
    two replicates at each checkpoint), from 6 to 40, and every default grid leaves the rate fit at least three
    checkpoints in the second half."""
    points = default_eval_points(steps, batch_size, 1797, eval_samples=1)
    assert points == expected
    grid = sorted(evaluation_steps(steps, None, points))
    assert grid[0] == 0 and grid[-1] == steps
    assert len(grid) - 1 <= points  # step 0 is the start, not a checkpoint the budget pays for
    assert sum(step >= steps / 2 for step in grid) >= 3
    assert points * 1797 <= max(0.05 * steps * batch_size, 6 * 1797) * 1.05


def test_checkpoint_budget_sets_the_rows_a_run_writes() -> None:
    config = RunConfig(data="digits", hidden=16, depth=1, steps=300, constants=False)
    result = train(config, load_dataset(config), progress=False)
    assert [row["step"] for row in result.metrics] == sorted(evaluation_steps(300, None, 6))


@pytest.mark.skipif(runtime._gomp_parallel() is None, reason="intra-op threads are reached only under GNU OpenMP")
def test_flush_denormals_reaches_every_intra_op_thread_and_is_undone() -> None:
    """Inside the block a product large enough to be shared out among the threads flushes denormals on every
    share, though the threads existed before; afterwards every share computes them again."""
    denormal = torch.full((1 << 20,), torch.finfo(torch.float32).tiny / 4)
    with runtime.intra_op_threads(2):
        assert torch.equal(denormal.mul(1.0), denormal)  # the pool now exists, without flushing
        with runtime.flush_denormals():
            assert runtime.flushes_denormals()
            inside = denormal.mul(1.0)
        after = denormal.mul(1.0)
    assert inside.count_nonzero() == 0
    assert torch.equal(after, denormal) and not runtime.flushes_denormals()


# Prints the minor page faults of writing a fresh block of 64 MiB in a block of retained_heap, then of 60 MiB there
# after a nested block and a block in another thread ended, and after the last block: each block freed at once. (A
# block of the same size would not always fit where the first one was: torch asks for aligned memory, which glibc
# serves from a slightly larger free chunk.)
_HEAP_SCRIPT = """
import resource, threading, torch
from vaeconverge import runtime

def faults(mib):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(mib << 18)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

with runtime.retained_heap():
    first = faults(64)
    with runtime.retained_heap():
        pass
    def block():
        with runtime.retained_heap():
            pass
    thread = threading.Thread(target=block)
    thread.start()
    thread.join()
    again = faults(60)
print(first, again, faults(60))
"""


@pytest.mark.skipif(runtime._glibc_malloc() is None, reason="the heap is tuned only under glibc's malloc")
def test_a_run_reuses_the_memory_it_frees_and_hands_it_back_when_it_ends() -> None:
    """Inside the block the memory of a freed 64 MiB block serves the next large allocation without faulting its
    pages in again, also after a nested block and a block in another thread end; once the last block is left,
    glibc hands such a block back to the kernel when it is freed, so writing one again faults every page in. In a
    process of its own, where no other thread allocates meanwhile."""
    pages = (60 << 20) // resource.getpagesize()
    out = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT], capture_output=True, text=True, check=True).stdout
    first, again, after = map(int, out.split())
    assert first > pages / 2 and again < pages / 10 and after > pages / 2


def test_denormals_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="--denormals"):
        RunConfig(denormals="ieee").validate()

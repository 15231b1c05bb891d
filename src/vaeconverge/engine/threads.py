"""How many intra-op threads a run uses: one for a small single model, every core otherwise.

A small step costs more in thread hand-offs than a second core gains. A single model on one thread is also
what keeps replica t of a T-seed run bit-identical to the single run of seed t: with T >= 2 replicas the
threads share out whole replicas' products (checked bit for bit against one thread on the digits MLP, ELBO
and IWAE), whereas one product on several threads may split its reduction and round differently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

# Below this many floating-point operations per training step (all replicas, forward and backward), one
# thread was faster on the 2-core reference machine: 0.34 GFLOP (digits MLP, 8 seeds) took 22 ms per step
# on one thread and 38 ms on two; 1.27 GFLOP (784-512-16 MLP, B = 256) 34 ms on one and 20 ms on two.
SINGLE_THREAD_FLOPS = 1e9


def step_flops(forward, *args: torch.Tensor) -> int:
    """Floating-point operations of one training step: 3x those of ``forward(*args)`` (backward ~ 2x forward)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward(*args)
    return 3 * counter.get_total_flops()


def choose_threads(flops_per_step: float, replicas: int, requested: int | None = None) -> int:
    """``requested`` if given; else 1 thread for one replica below :data:`SINGLE_THREAD_FLOPS`, every usable
    core otherwise."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if replicas == 1 and flops_per_step < SINGLE_THREAD_FLOPS else cores


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

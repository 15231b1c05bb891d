"""How a run executes, decided from the size of one replica's training step: the ensemble's layout and the
number of intra-op threads.

Both depend on one replica's step, not on the number of replicas T, wherever they could change a replica's
numbers: replica t of a T-seed run must execute the kernels of the single run of seed t.

- Layout. Below :data:`LOOP_FLOPS` a step is dominated by per-operation overhead, and evaluating all replicas
  at once (stacked parameters, batched products) divides that overhead by T; above it the products keep the
  cores busy by themselves, so the replicas run one after another, as do models with layers that do not take
  stacked parameters.
- Threads. A small step costs more in thread hand-offs than a second core gains, and one product on several
  threads may split its reduction and round differently. So a single small replica runs on one thread;
  T >= 2 small (vectorised) replicas use every core, the threads sharing out whole replicas' products
  (checked bit for bit against one thread on the digits MLP, ELBO and IWAE); large replicas use every core
  whatever T.
- Denormals. Arithmetic on denormal floats (below 1.2e-38 in float32) takes a slow path on x86, and training
  makes them: Adam's first moment of a weight whose gradient is exactly zero, as behind a dead ReLU unit, shrinks
  by beta1 each step and enters that range after about 700 steps. Flushing them to zero kept the Adam step of 8
  digits MLPs at 0.7 ms where it grew to 4.3 ms (benchmarks/seeds_vs_naive.py); only numbers in that range
  change, to zero.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode

# Floating-point operations of one replica's training step (forward and backward) from which replicas are
# looped rather than vectorised, and use every core. On the 2-core reference machine a 784-512-16 MLP at
# B = 256 (1.3 GFLOP) stepped in 8.3 ms looped and 9.3 ms vectorised (measured under vmap, the former
# stacked evaluation); 8 digits MLPs at B = 64 (0.04 GFLOP each) in about 5 ms stacked against 11.3 ms looped.
LOOP_FLOPS = 1e9


@dataclass(frozen=True)
class Plan:
    """``vectorised``: all replicas in one pass over stacked parameters, else one replica after another;
    ``threads``: intra-op."""

    vectorised: bool
    threads: int


def step_flops(forward: Callable[..., torch.Tensor], *args: torch.Tensor) -> int:
    """Floating-point operations of one training step: 3x those of ``forward(*args)`` (backward ~ 2x forward)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward(*args)
    return 3 * counter.get_total_flops()


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan(replica_flops: float, replicas: int, requested_threads: int | None = None, loop: bool = False) -> Plan:
    """The layout and thread count for ``replicas`` replicas whose steps cost ``replica_flops`` each.
    ``requested_threads`` overrides the thread count; ``loop`` forces the looped layout (for optimizers that
    must see each replica's parameters in their own shapes, and layers that do not take them stacked)."""
    small = replica_flops < LOOP_FLOPS
    threads = 1 if small and replicas == 1 else available_cores()
    return Plan(small and not loop, threads if requested_threads is None else requested_threads)


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The signature of the body of an OpenMP parallel region, as GNU OpenMP's GOMP_parallel takes it.
_TEAM_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@cache
def _gomp_parallel() -> Callable[..., None] | None:
    """GNU OpenMP's entry point for a parallel region, where torch's intra-op threads are GNU OpenMP's (the
    Linux wheels); None elsewhere."""
    try:
        parallel = ctypes.CDLL(None).GOMP_parallel
    except (AttributeError, OSError, TypeError):  # not loaded, or no process-wide symbol table (Windows)
        return None
    parallel.argtypes = [_TEAM_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    return parallel


def _set_flush_denormal_everywhere(on: bool) -> None:
    """``torch.set_flush_denormal(on)`` on the calling thread and on each of its intra-op threads.

    The flush-to-zero bits live in each thread's floating-point control register, so torch's call sets only the
    thread that makes it; OpenMP threads inherit them only when created afterwards, and the pool usually exists
    by then. With GNU OpenMP the call is run once on every thread of a team the size of the pool; elsewhere
    only the calling thread is set.
    """
    torch.set_flush_denormal(on)
    parallel, threads = _gomp_parallel(), torch.get_num_threads()
    if parallel is not None and threads > 1:
        parallel(_TEAM_BODY(lambda _: torch.set_flush_denormal(on)), None, threads, 0)


def flushes_denormals() -> bool:
    """Whether the calling thread flushes denormal floats to zero."""
    return torch.tensor(torch.finfo(torch.float32).tiny / 2).mul(1.0).item() == 0.0


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Run the block with denormal floats flushed to zero on every intra-op thread (see the module's
    docstring), and with IEEE arithmetic again afterwards if the calling thread had it; ``enabled=False`` changes
    nothing. Enter it inside :func:`intra_op_threads`, so that it reaches the threads the block uses."""
    if not enabled:
        yield
        return
    before = flushes_denormals()
    _set_flush_denormal_everywhere(True)
    try:
        yield
    finally:
        if not before:
            _set_flush_denormal_everywhere(False)

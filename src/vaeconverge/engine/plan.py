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

The README's performance section has the measurements behind :data:`LOOP_FLOPS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..runtime import available_cores

# Floating-point operations of one replica's training step (forward and backward) from which replicas are
# looped rather than vectorised, and use every core: between a digits MLP (0.04 GFLOP) and a 784-512-16 MLP at
# B = 256 (1.3 GFLOP), where looping became the faster layout on the 2-core reference machine.
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


def plan(replica_flops: float, replicas: int, requested_threads: int | None = None, loop: bool = False) -> Plan:
    """The layout and thread count for ``replicas`` replicas whose steps cost ``replica_flops`` each.
    ``requested_threads`` overrides the thread count; ``loop`` forces the looped layout (for optimizers that
    must see each replica's parameters in their own shapes, and layers that do not take them stacked)."""
    small = replica_flops < LOOP_FLOPS
    threads = 1 if small and replicas == 1 else available_cores()
    return Plan(small and not loop, threads if requested_threads is None else requested_threads)



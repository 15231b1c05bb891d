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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
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


# Copies of the parameters a run holds per replica: the weights, their gradient, Adam's two moments and the two
# independent gradient replicates of a checkpoint.
STATE_COPIES = 6
# Examples per chunk of a checkpoint's full-data evaluation (diagnostics.grad_norms).
EVAL_CHUNK = 2048


@dataclass(frozen=True)
class StepCost:
    """One replica's training step as measured on torch's meta device, where nothing is allocated: its
    parameters, floating-point operations (forward and backward) and the bytes of the forward pass's tensors."""

    parameters: int
    flops: int
    forward_bytes: int
    batch_size: int

    def run_bytes(self, replicas: int, examples: int) -> tuple[float, float]:
        """An estimate of a run's peak memory beyond its data, in two parts: the parameters' copies, and the
        tensors of a training step or of a checkpoint's chunk of ``examples`` (whichever is larger) twice over
        for the backward pass; each once per replica."""
        per_example = self.forward_bytes / self.batch_size
        activations = 2 * per_example * max(self.batch_size, min(examples, EVAL_CHUNK))
        return replicas * STATE_COPIES * 4 * self.parameters, replicas * activations


class _ForwardBytes(TorchDispatchMode):
    """Adds up the bytes of every new tensor the operations under it produce (views of others hold none)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Callable[..., object], types: object, args: tuple = (),
                           kwargs: dict | None = None) -> object:
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            self.total += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def step_cost(model: torch.nn.Module, forward: Callable[..., torch.Tensor], batch_size: int,
              *args: torch.Tensor) -> StepCost:
    """The :class:`StepCost` of ``forward(*args)`` for ``model``, all built on the meta device (so that a step
    too large for memory is measured, not allocated); backward costs about twice the forward's operations."""
    with FlopCounterMode(display=False) as counter, _ForwardBytes() as sizes, torch.no_grad():
        forward(*args)
    parameters = sum(p.numel() for p in model.parameters())
    return StepCost(parameters, 3 * counter.get_total_flops(), sizes.total, batch_size)


def plan(replica_flops: float, replicas: int, requested_threads: int | None = None, loop: bool = False,
         device: torch.device | None = None) -> Plan:
    """The layout and thread count for ``replicas`` replicas whose steps cost ``replica_flops`` each.
    ``requested_threads`` overrides the thread count; ``loop`` forces the looped layout (for optimizers that
    must see each replica's parameters in their own shapes, and layers that do not take them stacked). On a
    GPU every stackable model is vectorised: one kernel for all replicas rather than T small ones (a choice
    not yet measured on a GPU)."""
    small = replica_flops < LOOP_FLOPS or (device is not None and device.type == "cuda")
    threads = 1 if small and replicas == 1 else available_cores()
    return Plan(small and not loop, threads if requested_threads is None else requested_threads)



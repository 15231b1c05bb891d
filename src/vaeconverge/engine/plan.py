"""How a run executes, decided from the size of one replica's training step: the ensemble's layout and the
number of intra-op threads.

Both depend on one replica's step, not on the number of replicas T, wherever they could change a replica's
numbers: replica t of a T-seed run must execute the kernels of the single run of seed t.

- Layout. Below :data:`LOOP_FLOPS` a step is dominated by per-operation overhead, and evaluating all replicas
  at once (stacked parameters, batched products) divides that overhead by T; above it the products keep the
  cores busy by themselves, so the replicas run one after another, as do models with layers that do not take
  stacked parameters.
- Threads. One product on several threads may split its reduction and round differently, and a small step
  gains little from a second core (at most 10% measured). So a single small replica runs on one thread;
  everything else on the cores other processes leave idle, chosen when the run starts and followed while it
  trains: an OpenMP thread that shares its core with a busy process holds up every parallel region (measured
  2-4x slower than one thread). T >= 2 small (vectorised) replicas share out whole replicas' products among
  the threads (checked bit for bit against one thread on the digits MLP, ELBO and IWAE, and with the count
  changed mid-run), so their numbers do not depend on the count (what is measured of one replica alone runs on
  one thread: ``EnsembleSubject.one_replica``); a large replica's may change in the last bits with it: the
  summary records the count, and ``--threads`` fixes it.

The README's performance section has the measurements behind :data:`LOOP_FLOPS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from ..diagnostics.constants import LANCZOS_COPIES
from ..runtime import LoadSample

# Floating-point operations of one replica's training step (forward and backward) from which replicas are
# looped rather than vectorised, and use every core: between a digits MLP (0.04 GFLOP) and a 784-512-16 MLP at
# B = 256 (1.3 GFLOP), where looping became the faster layout on the 2-core reference machine.
LOOP_FLOPS = 1e9


# Examples per chunk of a checkpoint's full-data evaluation (diagnostics.grad_norms) or of the smoothness probe's
# Hessian-vector products at most, and examples whose per-example gradients a constants probe holds at most and at
# least (diagnostics.constants).
EVAL_CHUNK = 2048
PROBE_EXAMPLES, MIN_PROBE_EXAMPLES = 256, 16
# Memory a checkpoint's chunk or a constants probe may hold beyond training's own step: chunks and probes are
# sized to it from one replica's measured step, so that a conv network's diagnostics fit where its training does.
DIAGNOSTICS_BYTES = 512 * 2**20
# Copies of the parameters a run holds per replica: the weights, their gradient, Adam's two moments and the two
# independent gradient replicates of a checkpoint.
STATE_COPIES = 6


@dataclass(frozen=True)
class Plan:
    """``vectorised``: all replicas in one pass over stacked parameters, else one replica after another;
    ``threads``: intra-op, at the start; ``follows_load``: whether the count then follows the load
    (``runtime.LoadFollower``); ``eval_chunk``: examples per chunk of a checkpoint; ``hvp_chunk``: examples per
    term of the smoothness probe's Hessian-vector products; ``probe_examples``: examples whose per-example
    gradients a constants probe takes."""

    vectorised: bool
    threads: int
    follows_load: bool = False
    eval_chunk: int = EVAL_CHUNK
    hvp_chunk: int = EVAL_CHUNK
    probe_examples: int = PROBE_EXAMPLES


@dataclass(frozen=True)
class StepCost:
    """One replica's training step as measured on torch's meta device, where nothing is allocated: its
    parameters, floating-point operations (forward and backward) and the bytes of the forward pass's tensors."""

    parameters: int
    flops: int
    forward_bytes: int
    batch_size: int

    @property
    def example_bytes(self) -> float:
        """The bytes one example's forward and backward pass hold (the forward's tensors, twice over)."""
        return 2 * self.forward_bytes / self.batch_size

    def eval_chunk(self) -> int:
        """Examples per chunk of a checkpoint: as many as :data:`DIAGNOSTICS_BYTES` holds (a training batch's
        worth at least, :data:`EVAL_CHUNK` at most)."""
        return max(self.batch_size, min(EVAL_CHUNK, int(DIAGNOSTICS_BYTES // self.example_bytes)))

    def hvp_chunk(self) -> int:
        """Examples per term of a Hessian-vector product (forward-over-reverse: the passes' tensors and their
        tangents, twice an example's pass): as many as :data:`DIAGNOSTICS_BYTES` holds beside the Lanczos
        iteration's vectors, :data:`EVAL_CHUNK` at most."""
        room = DIAGNOSTICS_BYTES - self.lanczos_bytes()
        return max(1, min(EVAL_CHUNK, int(room // (2 * self.example_bytes))))

    def lanczos_bytes(self) -> int:
        """What the smoothness probe's Lanczos iteration holds beside its products: float64 copies of the
        parameters (``diagnostics.constants.LANCZOS_COPIES``)."""
        return LANCZOS_COPIES * 8 * self.parameters

    def probe_examples(self) -> int:
        """Examples of a constants probe: each holds two draws of its gradient (and a copy, flattened) and of its
        pass; as many as :data:`DIAGNOSTICS_BYTES` holds, between :data:`MIN_PROBE_EXAMPLES` and
        :data:`PROBE_EXAMPLES`."""
        per_example = 2 * (2 * 4 * self.parameters + self.example_bytes)
        return max(MIN_PROBE_EXAMPLES, min(PROBE_EXAMPLES, int(DIAGNOSTICS_BYTES // per_example)))

    def run_bytes(self, replicas: int, examples: int, probes: bool = True) -> tuple[float, float]:
        """An estimate of a run's peak memory beyond its data, in two parts: what grows with the parameters (their
        copies, once per replica, and the larger of a constants probe's per-example gradients and its Lanczos
        vectors where the run ``probes``), and
        what grows with the examples evaluated at once (a training step's or a checkpoint's chunk of up to
        ``examples``, whichever is larger, once per replica, and the larger of a probe's passes and one term of
        its Hessian-vector products)."""
        chunk = self.example_bytes * max(self.batch_size, min(examples, self.eval_chunk()))
        draws = 2 * self.probe_examples() if probes else 0
        hvp = 2 * self.example_bytes * min(examples, self.hvp_chunk()) if probes else 0
        probe_state = max(draws * 2 * 4 * self.parameters, self.lanczos_bytes() if probes else 0)
        return (replicas * STATE_COPIES * 4 * self.parameters + probe_state,
                replicas * chunk + max(draws * self.example_bytes, hvp))


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
         device: torch.device | None = None, load: LoadSample | None = None) -> Plan:
    """The layout and thread count for ``replicas`` replicas whose steps cost ``replica_flops`` each.
    ``requested_threads`` overrides the thread count; ``loop`` forces the looped layout (for optimizers that
    must see each replica's parameters in their own shapes, and layers that do not take them stacked); ``load``
    samples the other processes' use of the cores (from the run's start; taken now if not given); a count chosen
    from it, not requested, follows the load while the run trains. On a GPU every
    stackable model is vectorised: one kernel for all replicas rather than T small ones (a choice not yet
    measured on a GPU)."""
    small = replica_flops < LOOP_FLOPS or (device is not None and device.type == "cuda")
    vectorised = small and not loop
    if requested_threads is not None:
        return Plan(vectorised, requested_threads)
    if small and replicas == 1:
        return Plan(vectorised, 1)
    return Plan(vectorised, (load or LoadSample()).idle_cores(), follows_load=True)

"""T independent replicas of one VAE trained in a single pass, in one of two layouts.

Both sum the replicas' losses, so each replica's gradient stays its own, and both hand one torch.optim
optimizer tensors in which an elementwise optimizer (SGD, Adam, RMSprop, Adagrad, ...) is T independent
optimizers. Which layout a run uses depends on the size of one replica's step, never on T
(``engine/plan.py``), so that replica t of a T-seed run and the single run with seed t execute the same
kernels on the same numbers:

- :class:`VectorisedEnsemble`, for small models whose steps are dominated by per-operation overhead: the
  parameters are stacked along a new leading dimension (``torch.func.stack_module_state``), every replica's in
  one row of a single flat tensor that the optimizer steps and whose squared norms are one reduction, and the
  model, whose layers take stacked parameters natively (``nn/layers.py``: one batched product per layer), holds
  views of it and is evaluated for all replicas at once. This needs no vmap, whose batching rules cost about ten
  dispatched operations per linear layer where one ``baddbmm`` does.
- :class:`LoopedEnsemble`, for models whose products keep the cores busy on their own, and for layers that do
  not take stacked parameters (the conv networks): T plain modules evaluated one after another.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call, stack_module_state

from ..diagnostics import PosteriorUsage, posterior_usage, replica_squared_norms
from ..models import VAE
from ..nn.layers import stacks_replicas
from ..objectives import Objective, ObjectiveModule

# Each replica's row of the flat parameters is padded to a multiple of this many entries. torch's fused CPU
# optimizers work through a tensor in 16-entry units with vector instructions and round a ragged tail
# differently; with rows aligned, an entry's update no longer depends on where its replica sits.
ROW_ALIGNMENT = 64

# With T >= 2 a leaf (a view of the flat parameters, strided by their row) and its gradient (the same view of the
# flat gradient) are not dense, which autograd flags once as a layout it may handle slowly; the in-place sum into
# that view is the layout's purpose.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


class Ensemble(ABC):
    """T replicas of one architecture and the objective evaluated on all of them.

    Buffers (input standardisation, a fixed decoder variance) depend only on the configuration and the data,
    so the replicas must agree on them.
    """

    def __init__(self, models: Sequence[VAE], objective: Objective) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        first = dict(models[0].named_buffers())
        for model in models[1:]:
            for name, buffer in model.named_buffers():
                if not torch.equal(buffer, first[name]):
                    raise ValueError(f"replicas differ in buffer {name!r}; buffers must be shared")
        self.template = copy.deepcopy(models[0])
        self.objective = objective
        self.latent_dim = models[0].latent_dim
        self._size = len(models)

    def __len__(self) -> int:
        return self._size

    @property
    def device(self) -> torch.device:
        """Where the replicas' parameters live, and their data and noise must go."""
        return next(self.template.parameters()).device

    @property
    def parameters_per_replica(self) -> int:
        return sum(p.numel() for p in self.template.parameters())

    @abstractmethod
    def parameters(self) -> list[torch.Tensor]:
        """The tensors the optimizer steps; a backward pass through the ensemble leaves their gradients in
        ``grad``."""

    def zero_grad(self) -> None:
        """Clear the gradients of :meth:`parameters` before the next backward pass."""
        for p in self.parameters():
            p.grad = None

    @abstractmethod
    def __call__(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-example objective values (T, B) of every replica: x is (T, B, D), one batch per replica,
        or (B, D), the same batch for all; eps is (T, K, B, latent)."""

    @abstractmethod
    def surrogate(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-example surrogate values (T, B) of every replica, shaped as :meth:`__call__`'s: what training
        differentiates (``Objective.surrogate``), while diagnostics measure the values."""

    @abstractmethod
    def replica(self, t: int) -> VAE:
        """A detached copy of replica t as a plain module (for diagnostics that take one model)."""

    @abstractmethod
    def posterior_usage(self, x: torch.Tensor, chunk_size: int) -> list[PosteriorUsage]:
        """Each replica's use of its latent space over all of ``x`` (``diagnostics.posterior``), ``chunk_size``
        examples at a time."""

    @abstractmethod
    def squared_norms(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Squared Euclidean norm (T,) of each replica's gradient; ``grads`` match :meth:`parameters`."""

    @abstractmethod
    def flatten(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each replica's gradient as one vector, (T, P) (any padding zero); ``grads`` match :meth:`parameters`."""

    @abstractmethod
    def chunk_gradients(self, chunks: Sequence[torch.Tensor], eps: Sequence[torch.Tensor], scale: float
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """For a loss of ``-scale`` times the summed objective values of each chunk (B_c, D) under its noise
        (T, K, B_c, latent): each chunk's loss (T,) and gradient, flattened (T, P), leaving :meth:`parameters`'
        gradients alone."""

    @abstractmethod
    def scale_(self, grads: Sequence[torch.Tensor], factors: torch.Tensor) -> None:
        """Multiply each replica's gradient by its factor (T,), in place."""

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One ``state_dict`` per replica, as a plain model of the architecture would have it."""
        return [self.replica(t).state_dict() for t in range(len(self))]


class VectorisedEnsemble(Ensemble):
    """Every replica's parameters in one flat tensor (T, padded size), one row per replica, which the optimizer
    steps in one call; the model sees leaves that are views of it in the parameters' natural shapes (T, *shape),
    whose gradients accumulate in place into the matching views of the flat tensor's gradient. The padding of a
    row stays zero."""

    def __init__(self, models: Sequence[VAE], objective: Objective) -> None:
        super().__init__(models, objective)
        if not stacks_replicas(self.template):
            raise ValueError("this model has layers that do not take stacked parameters; use LoopedEnsemble")
        stacked, _ = stack_module_state(list(models))
        self._segments = _segments({f"model.{name}": p.shape[1:] for name, p in stacked.items()})
        width = -(-sum(segment.size for segment in self._segments) // ROW_ALIGNMENT) * ROW_ALIGNMENT
        first = next(iter(stacked.values()))
        self.flat = first.new_zeros(len(self), width)
        with torch.no_grad():
            for segment, p in zip(self._segments, stacked.values(), strict=True):
                segment.view(self.flat).copy_(p)
        self.flat.grad = torch.zeros_like(self.flat)
        self.flat.requires_grad_()
        self.params = _leaves(self._segments, self.flat, self.flat.grad)
        self.buffers = {f"model.{name}": b for name, b in self.template.named_buffers()}
        self._stacked = _holding(self.template, self.params)
        self._module = ObjectiveModule(self.template, objective)

    def parameters(self) -> list[torch.Tensor]:
        """The flat tensor (T, padded size), whose ``grad`` a backward pass through the ensemble fills."""
        return [self.flat]

    def zero_grad(self) -> None:
        self.flat.grad.zero_()

    def __call__(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._evaluate(self.objective, x, eps)

    def surrogate(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._evaluate(self.objective.surrogate, x, eps)

    def _evaluate(self, face: Callable[[VAE, torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                  eps: torch.Tensor) -> torch.Tensor:
        """One face of the objective on the model that holds every replica's parameters."""
        if x.dim() == 2:
            x = x.expand(len(self), *x.shape)
        return face(self._stacked, x, eps)

    def replica(self, t: int) -> VAE:
        model = copy.deepcopy(self.template)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(self.params[f"model.{name}"][t])
        return model

    def posterior_usage(self, x: torch.Tensor, chunk_size: int) -> list[PosteriorUsage]:
        """All replicas in one pass, each replica's products on one thread as in its single run."""
        return posterior_usage(self._stacked, x, chunk_size, replicas=len(self), device=self.device)

    def squared_norms(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return replica_squared_norms(grads)

    def flatten(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(grads), dim=1)

    def chunk_gradients(self, chunks: Sequence[torch.Tensor], eps: Sequence[torch.Tensor], scale: float
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """All chunks in one pass: each replica's row repeated once per chunk (a detached copy), so that the C
        chunks, zero-padded to one length and masked, are T x C replicas of one batched evaluation whose single
        backward pass yields every chunk's own gradient."""
        count, longest = len(chunks), max(len(chunk) for chunk in chunks)
        replicas = len(self)
        x = torch.stack([torch.nn.functional.pad(c, (0, 0, 0, longest - len(c))) for c in chunks])
        noise = torch.stack([torch.nn.functional.pad(e, (0, 0, 0, longest - e.shape[-2])) for e in eps], dim=1)
        mask = torch.stack([torch.arange(longest, device=x.device) < len(c) for c in chunks]).to(x.dtype)
        rows = self.flat.detach().repeat_interleave(count, dim=0)
        grad = torch.zeros_like(rows)
        leaves = _leaves(self._segments, rows, grad)
        values = functional_call(self._module, (leaves, self.buffers),
                                 (x.repeat(replicas, 1, 1), noise.flatten(0, 1)), tie_weights=False)
        losses = -(values.view(replicas, count, longest) * mask).sum(-1) * scale
        losses.sum().backward(inputs=list(leaves.values()))
        return list(losses.detach().unbind(1)), list(grad.view(replicas, count, -1).unbind(1))

    def scale_(self, grads: Sequence[torch.Tensor], factors: torch.Tensor) -> None:
        for g in grads:
            g.mul_(factors.view(-1, *([1] * (g.dim() - 1))))


class LoopedEnsemble(Ensemble):
    """T plain modules, each with its own parameter tensors, evaluated one after another."""

    def __init__(self, models: Sequence[VAE], objective: Objective) -> None:
        super().__init__(models, objective)
        self.models = [copy.deepcopy(model) for model in models]
        self._per_replica = len(list(self.template.parameters()))

    def parameters(self) -> list[torch.Tensor]:
        """Replica 0's parameters, then replica 1's, and so on."""
        return [p for model in self.models for p in model.parameters()]

    def __call__(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._evaluate(self.objective, x, eps)

    def surrogate(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._evaluate(self.objective.surrogate, x, eps)

    def _evaluate(self, face: Callable[[VAE, torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                  eps: torch.Tensor) -> torch.Tensor:
        """One face of the objective, ``face(model, x, eps)``, on each replica in turn."""
        batches = x if x.dim() == 3 else [x] * len(self)
        return torch.stack([face(model, xb, e) for model, xb, e in zip(self.models, batches, eps, strict=True)])

    def replica(self, t: int) -> VAE:
        return copy.deepcopy(self.models[t])

    def posterior_usage(self, x: torch.Tensor, chunk_size: int) -> list[PosteriorUsage]:
        return [posterior_usage(model, x, chunk_size)[0] for model in self.models]

    def _by_replica(self, grads: Sequence[torch.Tensor]) -> list[Sequence[torch.Tensor]]:
        k = self._per_replica
        return [grads[t * k:(t + 1) * k] for t in range(len(self))]

    def squared_norms(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.stack(torch._foreach_norm(list(own))).square().sum()
                            for own in self._by_replica(grads)])

    def chunk_gradients(self, chunks: Sequence[torch.Tensor], eps: Sequence[torch.Tensor], scale: float
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One chunk after another."""
        params, losses, grads = self.parameters(), [], []
        for chunk, noise in zip(chunks, eps, strict=True):
            loss = -self(chunk, noise).sum(-1) * scale
            grads.append(self.flatten(torch.autograd.grad(loss.sum(), params, allow_unused=True,
                                                          materialize_grads=True)))
            losses.append(loss.detach())
        return losses, grads

    def flatten(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        per_replica = self._by_replica(grads)
        out = grads[0].new_empty(len(per_replica), sum(g.numel() for g in per_replica[0]))
        for row, own in zip(out, per_replica, strict=True):  # written in place: one copy of a large model's gradient
            torch.cat([g.reshape(-1) for g in own], out=row)
        return out

    def scale_(self, grads: Sequence[torch.Tensor], factors: torch.Tensor) -> None:
        for own, factor in zip(self._by_replica(grads), factors, strict=True):
            torch._foreach_mul_(list(own), factor)


@dataclass(frozen=True)
class _Segment:
    """Where the parameter ``name`` lies in a replica's row: ``size`` entries from ``start``, for its per-replica
    ``shape``. A matrix is stored transposed: a linear layer computes x W^T, whose backward yields the
    gradient of W^T contiguous, so that it accumulates into the row without a transposing copy."""

    name: str
    start: int
    shape: torch.Size

    @property
    def size(self) -> int:
        return self.shape.numel()

    def view(self, rows: torch.Tensor) -> torch.Tensor:
        """This parameter of every row of ``rows`` (R, width), as an (R, *shape) view."""
        part = rows[:, self.start:self.start + self.size]
        if len(self.shape) == 2:
            return part.view(len(rows), self.shape[1], self.shape[0]).transpose(1, 2)
        return part.view(len(rows), *self.shape)


def _segments(shapes: dict[str, torch.Size]) -> list[_Segment]:
    """The parameters of ``shapes`` (per replica) one after another in a row."""
    segments, start = [], 0
    for name, shape in shapes.items():
        segments.append(_Segment(name, start, torch.Size(shape)))
        start += shape.numel()
    return segments


def _holding(template: VAE, leaves: dict[str, torch.Tensor]) -> VAE:
    """A copy of ``template`` whose parameters are replaced by ``leaves`` (named as ``model.`` + the parameter's
    name), held as plain tensors: the stacked model evaluated at every step, without swapping its parameters in
    and out as ``functional_call`` does at each call."""
    model = copy.deepcopy(template)
    for name, _ in template.named_parameters():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        delattr(module, attr)
        setattr(module, attr, leaves[f"model.{name}"])
    return model


def _leaves(segments: Sequence[_Segment], rows: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """Leaf tensors that are views of ``rows`` (R, width) in the parameters' natural shapes (R, *shape), each with
    the matching view of ``grad`` as its gradient, into which backward passes accumulate in place."""
    rows, leaves = rows.detach(), {}
    for segment in segments:
        leaf = segment.view(rows).requires_grad_()
        leaf.grad = segment.view(grad)
        leaves[segment.name] = leaf
    return leaves


def clip_replica_norms_(
    ensemble: Ensemble, grads: Sequence[torch.Tensor], squared_norms: torch.Tensor, max_norm: float
) -> None:
    """Scale each replica's gradient to norm at most ``max_norm`` (``clip_grad_norm_`` applied per replica)."""
    ensemble.scale_(grads, (max_norm / (squared_norms.sqrt() + 1e-6)).clamp(max=1.0))

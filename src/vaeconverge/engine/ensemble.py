"""T independent replicas of one VAE trained in a single pass, in one of two layouts.

Both sum the replicas' losses, so each replica's gradient stays its own, and both hand one torch.optim
optimizer tensors in which an elementwise optimizer (SGD, Adam, RMSprop, Adagrad, ...) is T independent
optimizers. Which layout a run uses depends on the size of one replica's step, never on T
(``engine/plan.py``), so that replica t of a T-seed run and the single run with seed t execute the same
kernels on the same numbers:

- :class:`VectorisedEnsemble`, for small models whose steps are dominated by per-operation overhead: the
  parameters are stacked along a new leading dimension (``torch.func.stack_module_state``) and the model,
  whose layers take stacked parameters natively (``nn/layers.py``: one batched product per layer), is evaluated
  for all replicas at once through ``functional_call``. This needs no vmap, whose batching rules cost about ten
  dispatched operations per linear layer where one ``baddbmm`` does.
- :class:`LoopedEnsemble`, for models whose products keep the cores busy on their own, and for layers that do
  not take stacked parameters (the conv networks): T plain modules evaluated one after another.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, stack_module_state

from ..diagnostics import replica_squared_norms
from ..models import VAE
from ..nn.layers import stacks_replicas
from ..objectives import Objective, ObjectiveModule

# Each replica's row of a flat parameter is padded to a multiple of this many entries. torch's fused CPU
# optimizers work through a tensor in 16-entry units with vector instructions and round a ragged tail
# differently; with rows aligned, an entry's update no longer depends on where its replica sits.
ROW_ALIGNMENT = 64


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
        """The trainable leaf tensors, for the optimizer."""

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
    def squared_norms(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Squared Euclidean norm (T,) of each replica's gradient; ``grads`` match :meth:`parameters`."""

    @abstractmethod
    def flatten(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each replica's gradient as one vector, (T, P) (any padding zero); ``grads`` match :meth:`parameters`."""

    def chunk_gradients(self, chunks: Sequence[torch.Tensor], eps: Sequence[torch.Tensor], scale: float
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """For a loss of ``-scale`` times the summed objective values of each chunk (B_c, D) under its noise
        (T, K, B_c, latent): each chunk's loss (T,) and gradient, flattened (T, P).
        One chunk after another here; :class:`VectorisedEnsemble` takes them in one pass."""
        params, losses, grads = self.parameters(), [], []
        for chunk, noise in zip(chunks, eps, strict=True):
            loss = -self(chunk, noise).sum(-1) * scale
            grads.append(self.flatten(torch.autograd.grad(loss.sum(), params, allow_unused=True,
                                                          materialize_grads=True)))
            losses.append(loss.detach())
        return losses, grads

    @abstractmethod
    def scale_(self, grads: Sequence[torch.Tensor], factors: torch.Tensor) -> None:
        """Multiply each replica's gradient by its factor (T,), in place."""

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One ``state_dict`` per replica, as a plain model of the architecture would have it."""
        return [self.replica(t).state_dict() for t in range(len(self))]


class VectorisedEnsemble(Ensemble):
    """Stacked parameters, one flat leaf of shape (T, padded size) per parameter whose padding stays zero;
    the model sees views (T, *shape) of the natural shapes and evaluates all replicas in one pass."""

    def __init__(self, models: Sequence[VAE], objective: Objective) -> None:
        super().__init__(models, objective)
        if not stacks_replicas(self.template):
            raise ValueError("this model has layers that do not take stacked parameters; use LoopedEnsemble")
        stacked, _ = stack_module_state(list(models))
        self._shapes = {f"model.{name}": p.shape for name, p in stacked.items()}
        self._leaves = {f"model.{name}": _aligned_leaf(p) for name, p in stacked.items()}
        self.buffers = {f"model.{name}": b for name, b in self.template.named_buffers()}
        self._module = ObjectiveModule(self.template, objective)
        self._surrogate_module = ObjectiveModule(self.template, objective, face="surrogate")

    def parameters(self) -> list[torch.Tensor]:
        """One leaf per parameter, replicas along dimension 0."""
        return list(self._leaves.values())

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Every replica's parameters in their natural shapes (T, *shape), as views of the leaves."""
        return {name: _unpad(leaf, shape) for (name, leaf), shape
                in zip(self._leaves.items(), self._shapes.values(), strict=True)}

    def __call__(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._evaluate(self._module, x, eps)

    def surrogate(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._evaluate(self._surrogate_module, x, eps)

    def _evaluate(self, module: ObjectiveModule, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """One face of the objective, through ``module``, on every replica's parameters at once."""
        if x.dim() == 2:
            x = x.expand(len(self), *x.shape)
        return functional_call(module, (self.params, self.buffers), (x, eps), tie_weights=False)

    def replica(self, t: int) -> VAE:
        model = copy.deepcopy(self.template)
        params = self.params
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(params[f"model.{name}"][t])
        return model

    def squared_norms(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return replica_squared_norms(grads)

    def flatten(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(grads), dim=1)

    def chunk_gradients(self, chunks: Sequence[torch.Tensor], eps: Sequence[torch.Tensor], scale: float
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """All chunks in one pass: each replica's parameters repeated once per chunk (detached copies), so that the
        C chunks, zero-padded to one length and masked, are T x C replicas of one batched evaluation whose single
        backward pass yields every chunk's own gradient."""
        count, longest = len(chunks), max(len(chunk) for chunk in chunks)
        replicas = len(self)
        x = torch.stack([torch.nn.functional.pad(c, (0, 0, 0, longest - len(c))) for c in chunks])
        noise = torch.stack([torch.nn.functional.pad(e, (0, 0, 0, longest - e.shape[-2])) for e in eps], dim=1)
        mask = torch.stack([torch.arange(longest, device=x.device) < len(c) for c in chunks]).to(x.dtype)
        leaves = {name: leaf.detach().repeat_interleave(count, dim=0).requires_grad_()
                  for name, leaf in self._leaves.items()}
        params = {name: _unpad(leaf, torch.Size((replicas * count, *shape[1:]))) for (name, leaf), shape
                  in zip(leaves.items(), self._shapes.values(), strict=True)}
        values = functional_call(self._module, (params, self.buffers),
                                 (x.repeat(replicas, 1, 1), noise.flatten(0, 1)), tie_weights=False)
        losses = -(values.view(replicas, count, longest) * mask).sum(-1) * scale
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        flat = torch.cat(grads, dim=1).view(replicas, count, -1)
        return list(losses.detach().unbind(1)), list(flat.unbind(1))

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

    def _by_replica(self, grads: Sequence[torch.Tensor]) -> list[Sequence[torch.Tensor]]:
        k = self._per_replica
        return [grads[t * k:(t + 1) * k] for t in range(len(self))]

    def squared_norms(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.stack(torch._foreach_norm(list(own))).square().sum()
                            for own in self._by_replica(grads)])

    def flatten(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        per_replica = self._by_replica(grads)
        out = grads[0].new_empty(len(per_replica), sum(g.numel() for g in per_replica[0]))
        for row, own in zip(out, per_replica, strict=True):  # written in place: one copy of a large model's gradient
            torch.cat([g.reshape(-1) for g in own], out=row)
        return out

    def scale_(self, grads: Sequence[torch.Tensor], factors: torch.Tensor) -> None:
        for own, factor in zip(self._by_replica(grads), factors, strict=True):
            torch._foreach_mul_(list(own), factor)


def _unpad(leaf: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The (T, *shape) view of an aligned leaf (see :func:`_aligned_leaf` for the layout)."""
    numel = shape[1:].numel()
    flat = leaf if leaf.shape[1] == numel else leaf[:, :numel]  # no slice without padding: its backward copies
    if len(shape) == 3:
        return flat.view(shape[0], shape[2], shape[1]).transpose(1, 2)
    return flat.view(shape)


def _aligned_leaf(stacked: torch.Tensor) -> torch.Tensor:
    """A (T, multiple of ROW_ALIGNMENT) leaf holding ``stacked`` (T, ...), zero-padded, that requires grad.

    Matrices are stored transposed: a linear layer computes x W^T, whose backward yields the gradient of W^T
    contiguous, so with W^T as the stored layout it accumulates into the leaf without a transposing copy.
    """
    stacked = stacked.detach()
    if stacked.dim() == 3:
        stacked = stacked.transpose(1, 2)
    flat = stacked.reshape(len(stacked), -1)
    padded = -(-flat.shape[1] // ROW_ALIGNMENT) * ROW_ALIGNMENT
    return torch.nn.functional.pad(flat, (0, padded - flat.shape[1])).requires_grad_()


def clip_replica_norms_(
    ensemble: Ensemble, grads: Sequence[torch.Tensor], squared_norms: torch.Tensor, max_norm: float
) -> None:
    """Scale each replica's gradient to norm at most ``max_norm`` (``clip_grad_norm_`` applied per replica)."""
    ensemble.scale_(grads, (max_norm / (squared_norms.sqrt() + 1e-6)).clamp(max=1.0))

"""T independent replicas of one VAE trained in a single vectorised pass.

The replicas' parameters are stacked along a new leading dimension (``torch.func.stack_module_state``) and
the objective is evaluated for all of them at once with ``torch.func.vmap`` over ``functional_call``. Their
losses are *summed*, so each stacked parameter's gradient holds every replica's own gradient, untouched by
the others; an elementwise optimizer (SGD, Adam, RMSprop, Adagrad, ...) over the stacked tensors is then T
independent optimizers. A single-seed run is the ensemble of one, so replica t of a T-seed run and the
single run with seed t execute the same kernels on the same numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from ..models import VAE
from ..objectives import Objective, ObjectiveModule

# Each replica's row of a flat parameter is padded to a multiple of this many entries. torch's fused CPU
# optimizers work through a tensor in 16-entry units with vector instructions and round a ragged tail
# differently; with rows aligned, an entry's update no longer depends on where its replica sits.
ROW_ALIGNMENT = 64


class Ensemble:
    """Stacked parameters of T replicas of one architecture, and the objective evaluated on all of them.

    With ``aligned`` (the default, for elementwise optimizers), each parameter is stored as one flat leaf of
    shape (T, padded size) whose padding stays zero; the model sees views of the natural shapes. Otherwise
    the leaves have the natural shapes (T, *shape), for optimizers that read a tensor's rows and columns.
    Buffers (input standardisation, a fixed decoder variance) depend only on the configuration and the data,
    so the replicas share them.
    """

    def __init__(self, models: Sequence[VAE], objective: Objective, aligned: bool = True) -> None:
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
        stacked, _ = stack_module_state(list(models))
        self._shapes = {f"model.{name}": p.shape for name, p in stacked.items()}
        self._aligned = aligned
        self._leaves = {f"model.{name}": _aligned_leaf(p) if aligned else p for name, p in stacked.items()}
        self.buffers = {f"model.{name}": b for name, b in self.template.named_buffers()}
        self._module = ObjectiveModule(self.template, objective)

    def __len__(self) -> int:
        return next(iter(self._leaves.values())).shape[0]

    def parameters(self) -> list[torch.Tensor]:
        """The trainable leaf tensors (one per parameter, replicas along dimension 0), for the optimizer."""
        return list(self._leaves.values())

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Every replica's parameters in their natural shapes (T, *shape), as views of the leaves."""
        if not self._aligned:
            return dict(self._leaves)
        return {name: _unpad(leaf, shape) for (name, leaf), shape
                in zip(self._leaves.items(), self._shapes.values(), strict=True)}

    @property
    def parameters_per_replica(self) -> int:
        return sum(_numel(shape) for shape in self._shapes.values())

    def _values(self, params: dict[str, torch.Tensor], x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return functional_call(self._module, (params, self.buffers), (x, eps), tie_weights=False)

    def __call__(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-example objective values (T, B) of every replica: x is (T, B, D), one batch per replica,
        or (B, D), the same batch for all; eps is (T, K, B, latent)."""
        x_dim = 0 if x.dim() == 3 else None
        return vmap(self._values, in_dims=(0, x_dim, 0))(self.params, x, eps)

    def replica(self, t: int) -> VAE:
        """A detached copy of replica t as a plain module (for diagnostics that take one model)."""
        model = copy.deepcopy(self.template)
        params = self.params
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(params[f"model.{name}"][t])
        return model

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One ``state_dict`` per replica, as a plain model of the architecture would have it."""
        return [self.replica(t).state_dict() for t in range(len(self))]


def _numel(shape: torch.Size) -> int:
    """Entries of one replica of a stacked parameter of ``shape`` (T, *shape)."""
    return shape[1:].numel()


def _unpad(leaf: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The (T, *shape) view of an aligned leaf (see :func:`_aligned_leaf` for the layout)."""
    numel = _numel(shape)
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


def clip_replica_norms_(grads: Sequence[torch.Tensor], squared_norms: torch.Tensor, max_norm: float) -> None:
    """Scale each replica's gradient to norm at most ``max_norm`` (``clip_grad_norm_`` applied per replica)."""
    scale = (max_norm / (squared_norms.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

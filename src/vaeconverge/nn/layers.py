"""Layers that also take parameters stacked over T replicas, for the ensemble's stacked layout.

Stacked parameters have shape (T, *shape) and come with inputs of shape (T, ..., features): replica t's
parameters act on replica t's inputs only, one batched product per layer instead of T. A module that holds
parameters of its own declares with ``stacks_replicas = True`` that its forward honours this convention;
modules without parameters of their own that act elementwise (activations, ``nn.Sequential``) need nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """``nn.Linear``, which also accepts stacked parameters: weight (T, out, in), bias (T, out), x (T, ..., in)."""

    stacks_replicas = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 2:
            return F.linear(x, self.weight, self.bias)
        # (T, ..., in) -> (T, N, in): one product per replica, the bias added by the same kernel
        rows = x.reshape(len(x), -1, x.shape[-1])
        out = torch.baddbmm(self.bias.unsqueeze(-2), rows, self.weight.mT)
        return out.view(*x.shape[:-1], out.shape[-1])


def per_replica(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A parameter that is one number per replica, of shape () or stacked (T,), viewed so that it broadcasts
    against ``like``, of shape (...) or stacked (T, ...)."""
    return value.reshape(-1, *[1] * (like.dim() - 1))


def stacks_replicas(module: nn.Module) -> bool:
    """Whether every submodule holding parameters of its own takes them stacked over replicas."""
    return all(getattr(m, "stacks_replicas", False)
               for m in module.modules() if next(m.parameters(recurse=False), None) is not None)

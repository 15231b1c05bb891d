"""An unbiased estimate of ||grad L||^2 from two independent Monte Carlo replicates of the full gradient.

The squared norm of one Monte Carlo gradient g overestimates ||E g||^2 by trace(Cov g); the inner product of
two independent replicates does not: E <g_1, g_2> = ||E g||^2. Each replicate is a sum over groups of examples
whose noise is independent, g_h = sum_c x_{h,c}, and the groups' differences d_c = x_{1,c} - x_{2,c} (the data
term cancels) give the estimate's standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SquaredNormEstimate:
    """``value``: <g_1, g_2>, unbiased for ||E g||^2 (it can be negative when the gradient is small next to its
    noise); ``se``: its Monte Carlo standard error (an estimate); ``biased``: ||(g_1 + g_2) / 2||^2, the squared
    norm of the two replicates' mean, which exceeds ||E g||^2 by trace(Cov g) / 2 in expectation."""

    value: float
    se: float
    biased: float


def unbiased_squared_norm(first: Tensor, second: Tensor) -> SquaredNormEstimate:
    """The estimate of ||E g||^2 from two independent replicates of g = sum_c x_c given by their groups' terms,
    ``first`` and ``second`` of shape (groups, P) (group c of both replicates covers the same examples).

    Given the parameters, Var <g_1, g_2> = 2 mu^T C mu + trace(C^2), with mu = E g and C = Cov g = sum_c C_c.
    The groups' differences d_c are independent of the replicates' mean g_bar = mu + e (Gaussian noise; merely
    uncorrelated otherwise) with E[d_c d_c^T] = 2 C_c, so E sum_c <g_bar, d_c>^2 = 2 mu^T C mu + 2 trace(Cov(e) C)
    = 2 mu^T C mu + trace(C^2): the variance, estimated without bias from ``groups`` >= 2 independent terms.
    """
    if first.shape != second.shape or first.dim() != 2:
        raise ValueError(f"need two (groups, P) tensors of one shape, got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    groups = len(first)
    if groups < 2:
        raise ValueError(f"need at least 2 groups for the standard error, got {groups}")
    first, second = first.double(), second.double()
    g1, g2 = first.sum(0), second.sum(0)
    mean = (g1 + g2) / 2
    variance = ((first - second) @ mean).square().sum().item()
    return SquaredNormEstimate(value=torch.dot(g1, g2).item(), se=math.sqrt(variance),
                               biased=mean.square().sum().item())

"""An unbiased estimate of ||grad L||^2 from two independent Monte Carlo replicates of the full gradient.

The squared norm of one Monte Carlo gradient g overestimates ||E g||^2 by trace(Cov g); the inner product of
two independent replicates does not: E <g_1, g_2> = ||E g||^2. Each replicate is a sum over groups of examples
whose noise is independent, g_h = sum_c x_{h,c}, and the groups' differences d_c = x_{1,c} - x_{2,c} (the data
term cancels) give the estimate's standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SquaredNormEstimate:
    """Per estimate (the leading shape of the replicates' terms, e.g. one per replica):

    ``value``: <g_1, g_2>, unbiased for ||E g||^2 (it can be negative when the gradient is small next to its
    noise); ``se``: its Monte Carlo standard error (an estimate; NaN with a single group); ``biased``: the mean
    of ||g_1||^2 and ||g_2||^2, what one replicate alone reports, which exceeds ||E g||^2 by trace(Cov g).
    """

    value: Tensor
    se: Tensor
    biased: Tensor


def unbiased_squared_norm(first: Tensor, second: Tensor) -> SquaredNormEstimate:
    """The estimate of ||E g||^2 from two independent replicates of g = sum_c x_c given by their groups' terms,
    ``first`` and ``second`` of shape (groups, ..., P) (group c of both replicates covers the same examples);
    the estimates have the shape ``...``, in float64.

    Given the parameters, Var <g_1, g_2> = 2 mu^T C mu + trace(C^2), with mu = E g and C = Cov g = sum_c C_c.
    The groups' differences d_c are independent of the replicates' mean g_bar = mu + e (Gaussian noise; merely
    uncorrelated otherwise) with E[d_c d_c^T] = 2 C_c, so E sum_c <g_bar, d_c>^2 = 2 mu^T C mu + 2 trace(Cov(e) C)
    = 2 mu^T C mu + trace(C^2): the variance, estimated without bias from ``groups`` >= 2 independent terms.
    """
    if first.shape != second.shape or first.dim() < 2:
        raise ValueError(f"need two (groups, ..., P) tensors of one shape, got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    # Every quantity is bilinear in the groups' terms, so the (groups x groups) Gram matrices of the replicates
    # carry them all: one read of the terms, no float64 copy of them.
    a, b = first.movedim(0, -2), second.movedim(0, -2)
    aa, ab, bb = _gram(a, a), _gram(a, b), _gram(b, b)
    value = ab.sum((-2, -1))
    biased = (aa.sum((-2, -1)) + bb.sum((-2, -1))) / 2
    if len(first) < 2:
        se = torch.full(value.shape, float("nan"), dtype=torch.float64, device=value.device)
    else:  # <d_c, g_bar> = <a_c - b_c, (sum_h a_h + b_h) / 2>
        se = ((aa + ab - ab.mT - bb).sum(-1) / 2).square().sum(-1).sqrt()
    return SquaredNormEstimate(value=value, se=se, biased=biased)


# The inner products are summed in float32 over slices of this many coordinates and the slices' sums in float64:
# one float32 sum over a million coordinates would lose about five significant digits. One matrix product per slice
# (rather than a batch of tiny products over blocks, which needed a permuted copy) keeps a 23-million-parameter
# network's checkpoint fast; its error against float64 arithmetic was no larger than the blocks' of 4096.
_SLICE = 16384


def _gram(u: Tensor, v: Tensor) -> Tensor:
    """sum_p u[..., g, p] v[..., h, p] for (..., G, P) and (..., H, P), as float64 (..., G, H)."""
    gram = u.new_zeros(*u.shape[:-1], v.shape[-2], dtype=torch.float64)
    for start in range(0, u.shape[-1], _SLICE):
        gram += (u[..., start:start + _SLICE] @ v[..., start:start + _SLICE].mT).double()
    return gram

"""How training rows are stored and read. Image sets keep their uint8 pixels (a quarter of float32's memory:
CelebA's training split is 2 GB rather than 8) and become floats in [0, 1] one batch or chunk at a time; every
other data set is a float tensor used as it is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PIXEL_MAX = 255  # uint8 pixels are divided by this into [0, 1]
PIXEL_DTYPE = torch.float32  # the dtype they are converted to
MOMENT_CHUNK = 4096  # rows summed at a time when taking the moments of uint8 data


def float_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype rows of ``x`` are used in: their own if floating, else that of converted pixels."""
    return x.dtype if x.is_floating_point() else PIXEL_DTYPE


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Rows as the models see them: floating data unchanged, uint8 pixels divided by 255 (float32, in [0, 1])."""
    return x if x.is_floating_point() else x.to(PIXEL_DTYPE).div_(PIXEL_MAX)


@dataclass(frozen=True)
class Moments:
    """Per-feature mean, population variance and sample (N - 1) standard deviation of the data, in
    :func:`float_dtype`: what the data-driven start of a model needs."""

    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor


def moments(x: torch.Tensor) -> Moments:
    """The :class:`Moments` of ``x`` as stored. Floating data: torch's reductions over the whole tensor. uint8
    pixels: exact integer sums taken ``MOMENT_CHUNK`` rows at a time (never a float copy of the whole set),
    divided once in float64."""
    if x.is_floating_point():
        return Moments(x.mean(0), x.var(0, unbiased=False), x.std(0))
    total = torch.zeros(x.shape[1], dtype=torch.int64)
    squares = torch.zeros(x.shape[1], dtype=torch.int64)
    for chunk in x.split(MOMENT_CHUNK):
        wide = chunk.to(torch.int64)
        total += wide.sum(0)
        squares += wide.square().sum(0)
    n = len(x)
    mean = total.double() / (n * PIXEL_MAX)
    var = (n * squares - total.square()).double() / (n * PIXEL_MAX) ** 2  # exact: N * sum x^2 - (sum x)^2
    std = (var * n / (n - 1)).sqrt()  # NaN for one row, as torch's std
    return Moments(mean.to(PIXEL_DTYPE), var.to(PIXEL_DTYPE), std.to(PIXEL_DTYPE))

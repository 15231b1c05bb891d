"""Generalised soft-clipping (THEORY.md section 2): a smooth, bounded, 1-Lipschitz stand-in for ReLU; and the
registry of ``--activation`` choices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry


class SoftClip(nn.Module):
    """f_s(x) = softplus_s(x - s1) - softplus_s(x - s2) + s1, with softplus_s(u) = log(1 + e^{s u}) / s.

    Values lie in (s1, s2); f' = sigmoid(s(x - s1)) - sigmoid(s(x - s2)) lies in (0, 1) and is
    (s / 4)-Lipschitz, which is the smoothness the convergence theorems need and ReLU lacks.
    """

    def __init__(self, s: float = 5.0, s1: float = 0.0, s2: float = 50.0) -> None:
        super().__init__()
        if s <= 0:
            raise ValueError(f"sharpness s must be positive, got {s}")
        if not s1 < s2:
            raise ValueError(f"need s1 < s2, got s1={s1}, s2={s2}")
        self.s, self.s1, self.s2 = float(s), float(s1), float(s2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1, a2 = self.s * (x - self.s1), self.s * (x - self.s2)
        # softplus(a) = -logsigmoid(-a) = a - logsigmoid(a). Below the midpoint use the first form, above
        # it the second, so that f - s1 (resp. s2 - f) is a difference of two *small* terms: no cancellation
        # of large values, outputs stay inside [s1, s2] for any input, and f', f'' stay accurate in the
        # tails. logsigmoid never overflows, so both branches and their gradients are finite everywhere.
        low = self.s1 + (F.logsigmoid(-a2) - F.logsigmoid(-a1)) / self.s
        high = self.s2 + (F.logsigmoid(a2) - F.logsigmoid(a1)) / self.s
        return torch.where(a1 + a2 > 0, high, low)

    def extra_repr(self) -> str:
        return f"s={self.s}, s1={self.s1}, s2={self.s2}"


@dataclass(frozen=True)
class ActivationSpec:
    """One ``--activation`` choice: its layer from the soft-clipping parameters (s, s1, s2), which it may ignore,
    and whether it is ``smooth`` (a Lipschitz derivative, which the convergence theorems need and ReLU lacks;
    smooth networks also soft-clip their output heads)."""

    name: str
    build: Callable[[float, float, float], nn.Module]
    smooth: bool


ACTIVATIONS: Registry[ActivationSpec] = Registry("activation", ((spec.name, spec) for spec in (
    ActivationSpec("relu", lambda s, s1, s2: nn.ReLU(), smooth=False),
    ActivationSpec("softclip", SoftClip, smooth=True),
)))


def register_activation(spec: ActivationSpec) -> ActivationSpec:
    """Add ``spec`` as a new ``--activation`` choice, for configurations, sweeps and the CLI alike."""
    return ACTIVATIONS.register(spec.name, spec)


def activation_spec(name: str) -> ActivationSpec:
    """The registered entry called ``name``; a ValueError listing the known names otherwise."""
    return ACTIVATIONS.lookup(name)


# Modules whose output is not continuously differentiable with a Lipschitz derivative (kinks, jumps, clipping):
# the smoothness the convergence theorems assume fails for a network that contains one.
NON_SMOOTH_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.SELU, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
    nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.Threshold, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
)


def non_smooth_activation(module: nn.Module) -> str | None:
    """The class name of the first submodule of ``module`` that is not smooth (:data:`NON_SMOOTH_MODULES`),
    None if there is none. Functions called inside ``forward`` (``F.relu``) are not modules and go unseen."""
    for sub in module.modules():
        if isinstance(sub, NON_SMOOTH_MODULES):
            return type(sub).__name__
    return None

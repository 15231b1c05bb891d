"""Generalised soft-clipping (docs/theory.md section 2): a smooth, bounded, 1-Lipschitz stand-in for ReLU; and the
registry of ``--activation`` choices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry

# exp(-40) = 4e-18 is below float64's relative resolution (2.2e-16).
_NEGLIGIBLE = 40.0
# Past this argument sigmoid rounds to 1 in float64 and softplus(a) to a: softplus is taken as linear there.
_LINEAR = 36.0


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
        # Below the midpoint softplus_s(x - s2) <= exp(-s (s2 - s1) / 2) / s, under float64's resolution of
        # f - s1 once s (s2 - s1) / 2 >= _NEGLIGIBLE: then it is not computed (one softplus per element, not two).
        self._two_terms = self.s * (self.s2 - self.s1) / 2 < _NEGLIGIBLE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SoftClipFunction.apply(x, self)[0]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), computed with torch's own derivatives (what :meth:`forward` computes, differentiated op by op)."""
        # f(x) = s1 + s2 - f(s1 + s2 - x): inputs above the midpoint are reflected below it, where f - s1 is a
        # sum of small or moderate terms (no cancellation of large values), so outputs stay inside [s1, s2] for
        # any input and f', f'' stay accurate in both tails. Softplus is linear past its threshold, so nothing
        # overflows.
        upper, y = self._reflected(x)
        return self._unfolded(upper, self._above_s1(y))

    def slope(self, x: torch.Tensor) -> torch.Tensor:
        """f'(x) = sigmoid(s (y - s1)) - sigmoid(s (y - s2)) at the reflected input y (f' is symmetric about the
        midpoint), in (0, 1]; differentiable, so that f'' and forward-over-reverse products follow from it."""
        return self._slope_at(self._reflected(x)[1])

    def value_and_slope(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(x) and f'(x) from one reflection of x: what a training step's forward pass computes and keeps."""
        upper, y = self._reflected(x)
        return self._unfolded(upper, self._above_s1(y)), self._slope_at(y)

    def _reflected(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which inputs lie above the midpoint, and the inputs with those reflected below it."""
        mid = 0.5 * (self.s1 + self.s2)
        upper = x > mid
        return upper, torch.where(upper, 2.0 * mid - x, x)

    def _shifted(self, y: torch.Tensor, by: float) -> torch.Tensor:
        """y - by, without a pass over y for the usual s1 = 0."""
        return y - by if by else y

    def _above_s1(self, y: torch.Tensor) -> torch.Tensor:
        """f(y) - s1 at a reflected input y."""
        g = F.softplus(self._shifted(y, self.s1), beta=self.s, threshold=_LINEAR)
        if self._two_terms:
            g = g - F.softplus(y - self.s2, beta=self.s, threshold=_LINEAR)
        return g

    def _unfolded(self, upper: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """f(x) from g = f(y) - s1 at the reflected input y."""
        return torch.where(upper, self.s2 - g, g + self.s1 if self.s1 else g)

    def _slope_at(self, y: torch.Tensor) -> torch.Tensor:
        d = torch.sigmoid(self.s * self._shifted(y, self.s1))
        if self._two_terms:
            d = d - torch.sigmoid(self.s * (y - self.s2))
        return d

    def extra_repr(self) -> str:
        return f"s={self.s}, s1={self.s1}, s2={self.s2}"


class _SoftClipFunction(torch.autograd.Function):
    """Soft-clipping with its derivative written out: the forward pass computes f'(x) beside f(x) from one
    reflection of x, and the backward pass is one product with it, where differentiating the forward op by op
    would keep and traverse about ten intermediates. A backward pass that is itself differentiated (double
    backward) takes f'(x) from ``slope``, made of differentiable ops, so second derivatives (double backward,
    forward-over-reverse) and ``torch.func`` transforms (grad, jvp, vmap) see the same function."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, clip: SoftClip) -> tuple[torch.Tensor, torch.Tensor]:
        return clip.value_and_slope(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, SoftClip],
                      output: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, ctx.clip = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, output[1])
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, slope = ctx.saved_tensors
        return grad * (ctx.clip.slope(x) if torch.is_grad_enabled() else slope), None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, _: None) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return tangent * ctx.clip.slope(x), None


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

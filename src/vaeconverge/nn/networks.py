"""Encoder and decoder bodies: the linear map and the multilayer perceptron, with ReLU or soft-clipping."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .activations import SoftClip

# Head ranges of the paper's soft-clipping networks (THEORY.md section 2).
MEAN_HEAD_RANGE = (-50.0, 50.0)
LOGVAR_HEAD_RANGE = (-20.0, 20.0)


@dataclass(frozen=True)
class NetworkSpec:
    """Shape of a body: ``linear`` (no hidden layer) or ``mlp`` with ``depth`` hidden layers of ``hidden`` units."""

    kind: str = "mlp"
    hidden: int = 200
    depth: int = 2
    activation: str = "relu"
    softclip_s: float = 5.0
    softclip_s1: float = 0.0
    softclip_s2: float = 50.0

    def activation_layer(self) -> nn.Module:
        """The hidden-layer non-linearity."""
        if self.activation == "relu":
            return nn.ReLU()
        if self.activation == "softclip":
            return SoftClip(self.softclip_s, self.softclip_s1, self.softclip_s2)
        raise ValueError(f"unknown activation {self.activation!r}")

    def head_clip(self, bounds: tuple[float, float]) -> nn.Module:
        """Soft-clipping of an output head to ``bounds`` for smooth networks; identity otherwise.

        The linear model keeps unclipped heads so that its closed forms stay exact.
        """
        if self.kind == "linear" or self.activation != "softclip":
            return nn.Identity()
        return SoftClip(self.softclip_s, *bounds)


def build_body(in_dim: int, spec: NetworkSpec) -> tuple[nn.Module, int]:
    """The layers before the output heads, and their output width."""
    if spec.kind == "linear":
        return nn.Identity(), in_dim
    if spec.kind != "mlp":
        raise ValueError(f"unknown network {spec.kind!r}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(spec.depth):
        layers += [nn.Linear(width, spec.hidden), spec.activation_layer()]
        width = spec.hidden
    return nn.Sequential(*layers), width

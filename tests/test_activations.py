"""Generalised soft-clipping: bounded, 1-Lipschitz, with an (s/4)-Lipschitz derivative (docs/theory.md section 2)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, jvp, vmap

from vaeconverge.nn import SoftClip


def derivatives(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    return d1.detach(), d2


def test_matches_the_formula() -> None:
    f = SoftClip(s=2.0, s1=-1.0, s2=3.0)
    x = torch.linspace(-6, 8, 57, dtype=torch.float64)
    expected = torch.log((1 + torch.exp(2 * (x + 1))) / (1 + torch.exp(2 * (x - 3)))) / 2 - 1
    torch.testing.assert_close(f(x), expected)


def test_derivative_in_open_unit_interval_and_second_derivative_bounded() -> None:
    s = 5.0
    f = SoftClip(s=s, s1=0.0, s2=50.0)
    x = torch.linspace(-5, 55, 6001, dtype=torch.float64)
    d1, d2 = derivatives(f, x)
    assert (d1 > 0).all() and (d1 <= 1).all()
    assert d2.abs().max() <= s / 4 + 1e-12
    # Strictly below 1 wherever 1 - f' is representable in float64 (the tails exceed 1e-7 here).
    d1_narrow, _ = derivatives(SoftClip(s=1.0, s1=0.0, s2=10.0), torch.linspace(-5, 15, 401, dtype=torch.float64))
    assert (d1_narrow > 0).all() and (d1_narrow < 1).all()
    # The bound is attained: f'' peaks at s/4 where sigmoid' does (x = s1), up to the other sigmoid.
    assert d2.abs().max() > 0.99 * s / 4


def test_bounded_by_the_clipping_range() -> None:
    f = SoftClip(s=1.0, s1=-20.0, s2=20.0)
    y = f(torch.linspace(-1e4, 1e4, 10001, dtype=torch.float64))
    assert (y >= -20).all() and (y <= 20).all()
    assert y.min() < -19.99 and y.max() > 19.99


def test_close_to_identity_inside_the_range_for_sharp_s() -> None:
    f = SoftClip(s=10.0, s1=-50.0, s2=50.0)
    x = torch.linspace(-40, 40, 81, dtype=torch.float64)
    torch.testing.assert_close(f(x), x, atol=1e-12, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    s=st.floats(0.1, 20.0),
    s1=st.floats(-30.0, 10.0),
    width=st.floats(0.5, 60.0),
    xs=st.lists(st.floats(-100.0, 100.0), min_size=1, max_size=20),
)
def test_lipschitz_properties_hold_for_any_parameters(s: float, s1: float, width: float, xs: list[float]) -> None:
    f = SoftClip(s=s, s1=s1, s2=s1 + width)
    d1, d2 = derivatives(f, torch.tensor(xs, dtype=torch.float64))
    assert ((d1 >= 0) & (d1 <= 1)).all()
    assert (d2.abs() <= s / 4 * (1 + 1e-9)).all()
    assert math.isfinite(f(torch.tensor(xs, dtype=torch.float64)).sum().item())


@pytest.mark.parametrize(("s", "s1", "s2"), [(5.0, 0.0, 50.0), (1.0, 0.0, 10.0), (2.0, -1.0, 3.0), (5.0, -20.0, 20.0)])
def test_written_out_derivatives_match_the_formula_differentiated_op_by_op(s: float, s1: float, s2: float) -> None:
    """The backward pass and jvp use f' = slope(x); autograd through ``value`` (the formula itself) is the oracle,
    for first and second derivatives, forward-over-reverse products and per-example gradients under vmap."""
    f = SoftClip(s=s, s1=s1, s2=s2)
    x = torch.linspace(s1 - 60, s2 + 60, 1201, dtype=torch.float64)
    fused, by_op = derivatives(f, x), derivatives(f.value, x)
    for ours, oracle in zip(fused, by_op, strict=True):  # atol: by_op's f'' is 0 past softplus's threshold
        torch.testing.assert_close(ours, oracle, rtol=1e-12, atol=1e-14)

    w = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    xs = torch.linspace(s1 - 10, s2 + 10, 24, dtype=torch.float64).view(4, 6)
    v = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)

    def loss(clip: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda w, x: clip(x * w).square().sum()

    for transform in (lambda g: jvp(grad(g), (w, xs), (v, torch.zeros_like(xs)))[1],
                      lambda g: vmap(grad(g), in_dims=(None, 0))(w, xs)):
        torch.testing.assert_close(transform(loss(f)), transform(loss(f.value)), rtol=1e-12, atol=1e-15)


def test_keeps_the_input_dtype_forward_and_backward() -> None:
    f = SoftClip()
    x = torch.linspace(-5, 55, 64, dtype=torch.bfloat16, requires_grad=True)
    y = f(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert y.dtype == g.dtype == torch.bfloat16

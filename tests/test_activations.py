"""Generalised soft-clipping: bounded, 1-Lipschitz, with an (s/4)-Lipschitz derivative (docs/theory.md section 2)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeconverge.nn import SoftClip


def derivatives(f: SoftClip, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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

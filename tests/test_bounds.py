"""The explicit bounds of docs/theory.md sections 3-4: hand-computed values, identities between them, monotonicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeconverge.theory import (
    Allocation,
    adagrad_bound,
    adam_bound,
    best_allocation,
    fit_shape,
    ghadimi_lan,
    ghadimi_lan_curve,
    iwae_basis,
    noise_variance,
    predict_noise_ratio,
    sgd_constant_bound,
    sgd_constant_step,
    sgd_decreasing_bound,
    shape_curve,
    vae_adam_basis,
)

fast = settings(max_examples=60, deadline=None)
positive = st.floats(1e-3, 1e3)
nonnegative = st.one_of(st.just(0.0), st.floats(1e-3, 1e3))
fraction = st.floats(0.01, 1.0)  # of the largest admissible value
open_fraction = st.floats(0.01, 0.99)


def decreasing_steps(c_gamma: float, n: int) -> np.ndarray:
    return c_gamma / np.sqrt(np.arange(1, n + 1))


# ------------------------------------------------------------------------------------------- hand values


def test_noise_variance_by_hand() -> None:
    assert noise_variance(2.0, 4.0, 4, 2) == pytest.approx(2 / 4 + 4 / 8)  # 0.5 + 0.5 = 1
    assert noise_variance(3.0, 0.0, 3, 7) == pytest.approx(1.0)  # 3/3, no Monte Carlo part
    assert noise_variance(0.0, 6.0, 1, 3) == pytest.approx(2.0)  # 6/3


def test_ghadimi_lan_by_hand() -> None:
    # L = 2, sigma2 = 1, delta = 3, steps (0.5, 0.25):
    # weights 2*0.5 - 2*0.25 = 0.5 and 2*0.25 - 2*0.0625 = 0.375, sum 0.875
    # numerator 2*3 + 2*1*(0.25 + 0.0625) = 6.625; 6.625 / 0.875 = 53/7
    assert ghadimi_lan([0.5, 0.25], L=2.0, sigma2=1.0, delta=3.0) == pytest.approx(53 / 7)


@pytest.mark.parametrize(("gamma", "n"), [(0.5, 3), (0.1, 10), (0.9, 1), (0.01, 1000)])
def test_ghadimi_lan_constant_steps_is_textbook_formula(gamma, n) -> None:
    L, sigma2, delta = 2.0, 1.0, 3.0
    textbook = (2 * delta + n * L * sigma2 * gamma**2) / (n * (2 * gamma - L * gamma**2))
    assert ghadimi_lan([gamma] * n, L, sigma2, delta) == pytest.approx(textbook, rel=1e-12)


def test_ghadimi_lan_constant_step_by_hand() -> None:
    # gamma = 0.5, n = 3: (6 + 3*2*1*0.25) / (3 * (1 - 0.5)) = 7.5 / 1.5 = 5
    assert ghadimi_lan([0.5] * 3, L=2.0, sigma2=1.0, delta=3.0) == pytest.approx(5.0)


def test_ghadimi_lan_curve_ends() -> None:
    steps = [0.5, 0.25, 0.4, 0.1, 0.3]
    curve = ghadimi_lan_curve(steps, L=2.0, sigma2=1.0, delta=3.0)
    assert curve.shape == (5,)
    # one step of 0.5: (6 + 2*0.25) / (1 - 0.5) = 13
    assert curve[0] == pytest.approx(13.0)
    assert curve[1] == pytest.approx(53 / 7)
    assert curve[-1] == pytest.approx(ghadimi_lan(steps, 2.0, 1.0, 3.0), rel=1e-12)
    for n in range(1, 6):
        assert curve[n - 1] == pytest.approx(ghadimi_lan(steps[:n], 2.0, 1.0, 3.0), rel=1e-12)


def test_sgd_decreasing_bound_by_hand() -> None:
    # L = 2, sigma2 = 1, delta = 3, c = 0.5, n = 3:
    # numerator 2*3 + 2*1*0.25*(1 + ln 3) = 6.5 + 0.5 ln 3; denominator 2*0.5*(sqrt(4) - 1) = 1
    assert sgd_decreasing_bound(2.0, 1.0, 3.0, 0.5, 3) == pytest.approx(6.5 + 0.5 * math.log(3))


def test_sgd_constant_by_hand() -> None:
    # L = 2, sigma2 = 1, delta = 3: sqrt(2*3/2) / sqrt(n) = sqrt(3/n)
    # n = 48: step min(0.5, 0.25) = 0.25; bound 2*2*3/48 + 2*1*sqrt(12)/sqrt(48) = 0.25 + 1 = 1.25
    assert sgd_constant_step(2.0, 1.0, 3.0, 48) == pytest.approx(0.25)
    assert sgd_constant_bound(2.0, 1.0, 3.0, 48) == pytest.approx(1.25)
    # n = 3: step min(0.5, 1) = 0.5; bound 12/3 + 2*sqrt(12)/sqrt(3) = 4 + 4 = 8
    assert sgd_constant_step(2.0, 1.0, 3.0, 3) == pytest.approx(0.5)
    assert sgd_constant_bound(2.0, 1.0, 3.0, 3) == pytest.approx(8.0)
    # no noise: step 1/L and only the deterministic term 2 L delta / n = 12/4
    assert sgd_constant_step(2.0, 0.0, 3.0, 4) == pytest.approx(0.5)
    assert sgd_constant_bound(2.0, 0.0, 3.0, 4) == pytest.approx(3.0)


def test_adam_bound_without_momentum_by_hand() -> None:
    # lr 0.5, b1 0, b2 0.75, eps 1, R 1, L 2, delta 3, d 2, n 4; N_t = 4
    # first term 2*1*3 / (0.5*4) = 3
    # E1 = 0.5*2*1*2*1 / (1*0.25) + 12*2*1*1 / (1*0.5) + 0 = 8 + 48 = 56
    # eps inside the root: ln(1 + 1 / (0.25*1)) = ln 5; -(4/4) ln 0.75 = ln(4/3)
    expected = 3 + 56 * (math.log(5) / 4 + math.log(4 / 3))
    assert adam_bound(0.5, 0.0, 0.75, 1.0, 1.0, 2.0, 3.0, 2, 4) == pytest.approx(expected)


def test_adam_bound_with_momentum_by_hand() -> None:
    # lr 0.5, b1 0.5, b2 0.75, eps 1, R 1, L 2, delta 3, d 2, n 5; N_t = 5 - 0.5/0.5 = 4, 1 - b1/b2 = 1/3
    # first term 2*1*3 / (0.5*4) = 3
    # E1: 0.5*2*1*2*0.5 / ((1/3)*0.25) = 12
    #     12*2*1*sqrt(0.5) / ((1/3)^1.5 * 0.5) = 72 sqrt(6)
    #     2*0.25*2*4*0.5 / ((1/3)*0.125) = 48
    # bracket: ln(1 + 1 / (0.25*1)) / 4 - (5/4) ln 0.75
    e1 = 12 + 72 * math.sqrt(6) + 48
    expected = 3 + e1 * (math.log(5) / 4 + 1.25 * math.log(4 / 3))
    assert adam_bound(0.5, 0.5, 0.75, 1.0, 1.0, 2.0, 3.0, 2, 5) == pytest.approx(expected)


def test_adagrad_bound_by_hand() -> None:
    # lr 0.5, eps 0.25 (inside the root), R 1, L 2, delta 3, d 2, n 4:
    # 2*1*3 / (0.5*2) = 6; (4*2*1 + 0.5*2*1*2) = 10; ln(1 + 4*1/0.25) / 2 = ln(17) / 2
    assert adagrad_bound(0.5, 0.25, 1.0, 2.0, 3.0, 2, 4) == pytest.approx(6 + 5 * math.log(17))


def test_bases_by_hand() -> None:
    # VAE: lstar 2, N = 2 layers, a = 3 (a^2 = 9), d 10, b1 0.5: noise column 2*9*10 ln n / (0.5 sqrt n)
    vae = vae_adam_basis([1, 4], lstar=2.0, layers=2, a=3.0, d=10, beta1=0.5)
    assert vae.shape == (2, 2)
    np.testing.assert_allclose(vae, [[2.0, 0.0], [1.0, 180 * math.log(4)]])
    # IWAE: lstar_k 2, d 8, B 2, K 2, n 4: 2/2 = 1 and 8 ln 4 / (4 * 2) = ln 4
    iwae = iwae_basis([4], lstar_k=2.0, d=8, batch_size=2, samples=2)
    np.testing.assert_allclose(iwae, [[1.0, math.log(4)]])
    np.testing.assert_allclose(shape_curve([[1.0, 2.0], [3.0, 4.0]], [0.5, 0.25]), [1.0, 2.5])


def test_predict_noise_ratio_by_hand() -> None:
    # sigma2_x 2, sigma2_eps 4 at (B, K) = (4, 1): 0.5 + 1 = 1.5
    assert predict_noise_ratio(2.0, 4.0, (4, 1), (8, 1)) == pytest.approx(0.75 / 1.5)  # both parts halve
    assert predict_noise_ratio(2.0, 4.0, (4, 1), (4, 2)) == pytest.approx(1.0 / 1.5)  # 0.5 + 0.5: only eps part
    assert predict_noise_ratio(2.0, 4.0, (4, 1), (4, 1)) == pytest.approx(1.0)
    assert predict_noise_ratio(2.0, 4.0, (8, 1), (4, 1)) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------- identities


@fast
@given(L=positive, sigma2=nonnegative, delta=nonnegative, frac=fraction, n=st.integers(1, 300))
def test_decreasing_closed_form_bounds_ghadimi_lan(L, sigma2, delta, frac, n) -> None:
    c_gamma = frac / L
    exact = ghadimi_lan(decreasing_steps(c_gamma, n), L, sigma2, delta)
    assert exact <= sgd_decreasing_bound(L, sigma2, delta, c_gamma, n) * (1 + 1e-12)


@fast
@given(L=positive, sigma2=nonnegative, delta=positive, n=st.integers(1, 10**5))
def test_constant_step_bound_covers_ghadimi_lan_at_that_step(L, sigma2, delta, n) -> None:
    gamma = sgd_constant_step(L, sigma2, delta, n)
    assert 0 < gamma <= 1 / L
    assert ghadimi_lan([gamma] * n, L, sigma2, delta) <= sgd_constant_bound(L, sigma2, delta, n) * (1 + 1e-9)


def test_adam_log_term_takes_the_recursion_s_own_eps() -> None:
    # eps is the epsilon inside the root: the log term is ln(1 + R^2 / ((1 - b2) eps)), no conversion from torch's
    base = {"lr": 1e-3, "beta1": 0.0, "R": 1.0, "L": 2.0, "delta": 0.0, "d": 1, "n": 10}
    for beta2 in (0.5, 0.9, 0.999):
        e1 = 1e-3 * 2 / (1 - beta2) + 12 / math.sqrt(1 - beta2)
        for eps in (1e-8, 0.25, 4.0):
            expected = e1 * (math.log1p(1 / ((1 - beta2) * eps)) / 10 - math.log(beta2))
            assert adam_bound(beta2=beta2, eps=eps, **base) == pytest.approx(expected, rel=1e-12)
        # eps = 1 / (4 (1 - b2)) gives ln 5 whatever b2
        assert adam_bound(beta2=beta2, eps=0.25 / (1 - beta2), **base) == pytest.approx(
            e1 * (math.log(5) / 10 - math.log(beta2)))


# ------------------------------------------------------------------------------------------- fitting shapes


def balanced_curve() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IWAE basis over n = 1..1e6 and coefficients whose two terms are equal at n = e^4."""
    n = np.unique(np.geomspace(1, 1e6, 400).round())
    basis = iwae_basis(n, lstar_k=2.0, d=1000, batch_size=4, samples=2)
    i = np.argmin(np.abs(np.log(n) - 4))
    coefficients = np.array([1.0, basis[i, 0] / basis[i, 1]])
    return basis, coefficients, shape_curve(basis, coefficients)


def test_fit_shape_recovers_exact_coefficients() -> None:
    basis, coefficients, curve = balanced_curve()
    np.testing.assert_allclose(fit_shape(basis, curve), coefficients, rtol=1e-8)
    vae = vae_adam_basis(np.arange(2, 200), lstar=5.0, layers=3, a=1.2, d=40, beta1=0.9)
    np.testing.assert_allclose(fit_shape(vae, shape_curve(vae, [0.3, 0.01])), [0.3, 0.01], rtol=1e-8)


def test_fit_shape_with_multiplicative_noise() -> None:
    basis, coefficients, curve = balanced_curve()
    noisy = curve * (1 + 0.05 * np.random.default_rng(0).standard_normal(curve.shape))
    fitted = fit_shape(basis, noisy)
    np.testing.assert_allclose(fitted, coefficients, rtol=0.15)


def test_fit_shape_is_relative() -> None:
    # a constant relative error everywhere is the relative least-squares optimum; an absolute fit would not
    # treat the small tail values on a par with the large head values
    basis, coefficients, curve = balanced_curve()
    np.testing.assert_allclose(fit_shape(basis, 1.1 * curve), 1.1 * coefficients, rtol=1e-8)
    skewed = curve * np.where(np.arange(len(curve)) < 20, 3.0, 1.0)  # big errors on the (largest) first points
    fitted = fit_shape(basis, skewed)
    np.testing.assert_allclose(fitted, coefficients, rtol=0.35)


def test_fit_shape_coefficients_are_non_negative() -> None:
    n = np.arange(2, 500)
    basis = iwae_basis(n, lstar_k=1.0, d=1, batch_size=1, samples=1)
    values = basis[:, 0] / (1 + 0.2 * np.log(n))  # falls faster than 1/sqrt(n): wants a negative ln n term
    unconstrained, *_ = np.linalg.lstsq(basis / values[:, None], np.ones_like(values), rcond=None)
    assert unconstrained[1] < 0
    fitted = fit_shape(basis, values)
    assert np.all(fitted >= 0)
    assert fitted[1] == 0 and fitted[0] > 0


# ------------------------------------------------------------------------------------------- allocation


def sgd_allocation_bound(L: float, delta: float, c_gamma: float):
    """The SGD run's own bound for an allocation: ``sgd_decreasing_bound`` at its noise and number of steps."""
    return lambda B, K, n, sigma2: sgd_decreasing_bound(L, sigma2, delta, c_gamma, n)


def test_best_allocation_table() -> None:
    best, table = best_allocation(100, sigma2_x=1.0, sigma2_eps=4.0, batch_sizes=[1, 4, 16, 128], samples=[1, 2, 5],
                                  bound=sgd_allocation_bound(2.0, 3.0, 0.5))
    assert isinstance(best, Allocation)
    assert len(table) == 4 * 3 - 3  # B = 128 leaves no step for any K
    assert best == table[0]
    assert best.bound == min(a.bound for a in table)
    assert [a.bound for a in table] == sorted(a.bound for a in table)
    for a in table:
        assert a.steps == 100 // (a.batch_size * a.samples) >= 1
        sigma2 = noise_variance(1.0, 4.0, a.batch_size, a.samples)
        assert a.bound == pytest.approx(sgd_decreasing_bound(2.0, sigma2, 3.0, 0.5, a.steps))


def test_best_allocation_is_the_argmin_of_the_given_bound_by_hand() -> None:
    # budget 100, sigma2_x 1, sigma2_eps 4, bound sigma2 + 1/n:
    #   B 1: K 1 5 + 1/100, K 2 3 + 1/50, K 5 1.8 + 1/20;  B 4: K 1 1.25 + 1/25, K 2 0.75 + 1/12, K 5 0.45 + 1/5
    #   B 16: K 1 0.3125 + 1/6 = 0.479, K 2 0.1875 + 1/3 = 0.521, K 5 0.1125 + 1;  B 32: K 1 0.15625 + 1/3 = 0.490
    calls = []

    def bound(B, K, n, sigma2):
        calls.append((B, K, n, sigma2))
        return sigma2 + 1 / n

    best, table = best_allocation(100, 1.0, 4.0, [1, 4, 16, 32], [1, 2, 5], bound)
    assert (best.batch_size, best.samples, best.steps) == (16, 1, 6)
    assert best.bound == pytest.approx(0.3125 + 1 / 6)
    assert [(a.batch_size, a.samples) for a in table[:3]] == [(16, 1), (32, 1), (16, 2)]
    assert sorted(calls) == sorted((a.batch_size, a.samples, a.steps, noise_variance(1.0, 4.0, a.batch_size,
                                                                                        a.samples)) for a in table)
    assert len(calls) == len(table) == 11  # B = 32 with K = 5 leaves no step
    # another bound ranks the same grid otherwise: the allocation is the argmin of the bound it is given
    # sigma2 + 10/n: B 4, K 2: 0.75 + 10/12 = 1.583 < B 4, K 1: 1.25 + 0.4 = 1.65 < B 16, K 1: 0.3125 + 10/6 = 1.979
    other, _ = best_allocation(100, 1.0, 4.0, [1, 4, 16, 32], [1, 2, 5], lambda B, K, n, s2: s2 + 10 / n)
    assert (other.batch_size, other.samples, other.steps) == (4, 2, 12)
    assert other.bound == pytest.approx(0.75 + 10 / 12)


def test_best_allocation_ties_go_to_smaller_bk() -> None:
    # no Monte Carlo noise: K = 2 and K = 3 both give 1 step at the same sigma2, so the same bound
    best, table = best_allocation(3, 1.0, 0.0, batch_sizes=[1], samples=[3, 2],
                                  bound=sgd_allocation_bound(1.0, 1.0, 1.0))
    assert table[0].bound == table[1].bound
    assert (best.batch_size, best.samples, best.steps) == (1, 2, 1)
    # then the smaller B: (B, K) = (2, 1) and (1, 2) spend the same B K, and a bound blind to B and K ties them
    best, _ = best_allocation(4, 1.0, 1.0, batch_sizes=[2, 1], samples=[2, 1], bound=lambda B, K, n, s2: 1.0)
    assert (best.batch_size, best.samples) == (1, 1)
    _, table = best_allocation(4, 1.0, 1.0, batch_sizes=[2, 1], samples=[2, 1], bound=lambda B, K, n, s2: 1.0)
    assert [(a.batch_size, a.samples) for a in table] == [(1, 1), (1, 2), (2, 1), (2, 2)]


@fast
@given(budget=st.integers(1, 10**5), L=positive, sigma2_x=nonnegative, delta=nonnegative, frac=fraction)
def test_best_allocation_without_monte_carlo_noise_uses_one_sample(budget, L, sigma2_x, delta, frac) -> None:
    best, table = best_allocation(budget, sigma2_x, 0.0, [1, 2, 8, 32], [1, 2, 5, 10],
                                  sgd_allocation_bound(L, delta, frac / L))
    assert best.samples == 1
    assert best.bound == min(a.bound for a in table)


# ------------------------------------------------------------------------------------------- monotonicity


@fast
@given(s_x=nonnegative, s_eps=nonnegative, b=st.integers(1, 100), k=st.integers(1, 100), more=st.integers(1, 100))
def test_noise_variance_decreases_in_batch_and_samples(s_x, s_eps, b, k, more) -> None:
    base = noise_variance(s_x, s_eps, b, k)
    assert noise_variance(s_x, s_eps, b + more, k) <= base
    assert noise_variance(s_x, s_eps, b, k + more) <= base
    if s_x + s_eps > 0:
        assert noise_variance(s_x, s_eps, b + more, k) < base
    if s_eps > 0:
        assert noise_variance(s_x, s_eps, b, k + more) < base


@fast
@given(L=positive, grow=st.floats(1.0, 10.0), sigma2=nonnegative, delta=nonnegative, frac=fraction,
       n=st.integers(1, 10**6), more=st.integers(1, 10**6))
def test_sgd_bounds_monotone(L, grow, sigma2, delta, frac, n, more) -> None:
    big_l, c_gamma = L * grow, frac / (L * grow)  # c_gamma admissible for both L and big_l
    dec = sgd_decreasing_bound(L, sigma2, delta, c_gamma, n)
    assert sgd_decreasing_bound(big_l, sigma2, delta, c_gamma, n) >= dec
    assert sgd_decreasing_bound(L, sigma2 * grow, delta, c_gamma, n) >= dec
    assert sgd_decreasing_bound(L, sigma2, delta + grow, c_gamma, n) >= dec
    assert sgd_decreasing_bound(L, sigma2, delta, c_gamma, n + more) <= dec
    const = sgd_constant_bound(L, sigma2, delta, n)
    assert sgd_constant_bound(big_l, sigma2, delta, n) >= const
    assert sgd_constant_bound(L, sigma2 * grow, delta, n) >= const
    assert sgd_constant_bound(L, sigma2, delta + grow, n) >= const
    assert sgd_constant_bound(L, sigma2, delta, n + more) <= const


@fast
@given(L=positive, grow=st.floats(1.0, 10.0), sigma2=nonnegative, delta=nonnegative,
       fracs=st.lists(open_fraction, min_size=1, max_size=30), extra=open_fraction)
def test_ghadimi_lan_monotone(L, grow, sigma2, delta, fracs, extra) -> None:
    steps = 2 / (L * grow) * np.array(fracs)  # admissible for both L and L * grow
    value = ghadimi_lan(steps, L, sigma2, delta)
    assert ghadimi_lan(steps, L * grow, sigma2, delta) >= value
    assert ghadimi_lan(steps, L, sigma2 * grow, delta) >= value
    assert ghadimi_lan(steps, L, sigma2, delta + grow) >= value
    constant = ghadimi_lan_curve(np.full(50, extra / L), L, sigma2, delta)  # constant steps: decreasing in n
    assert np.all(np.diff(constant) <= 1e-12 * constant[:-1])


@fast
@given(lr=st.floats(1e-5, 1.0), b2=st.floats(0.5, 0.9999), b1_frac=st.floats(0.0, 0.99), eps=st.floats(1e-10, 1.0),
       R=st.floats(0.1, 10.0), L=positive, grow=st.floats(1.0, 10.0), delta=nonnegative, d=st.integers(1, 10**6),
       n=st.integers(1, 10**6), more=st.integers(1, 10**6))
def test_adaptive_bounds_monotone(lr, b2, b1_frac, eps, R, L, grow, delta, d, n, more) -> None:
    b1 = b1_frac * b2
    n_adam = n + math.ceil(b1 / (1 - b1))
    adam = adam_bound(lr, b1, b2, eps, R, L, delta, d, n_adam)
    assert adam_bound(lr, b1, b2, eps, R, L * grow, delta, d, n_adam) >= adam
    assert adam_bound(lr, b1, b2, eps, R, L, delta + grow, d, n_adam) >= adam
    assert adam_bound(lr, b1, b2, eps, R, L, delta, d, n_adam + more) <= adam
    n_ada = n + math.ceil(math.e**2 * eps / R**2)  # ln(1 + n R^2 / eps) / sqrt(n) falls once n R^2 / eps >= e^2
    ada = adagrad_bound(lr, eps, R, L, delta, d, n_ada)
    assert adagrad_bound(lr, eps, R, L * grow, delta, d, n_ada) >= ada
    assert adagrad_bound(lr, eps, R, L, delta + grow, d, n_ada) >= ada
    assert adagrad_bound(lr, eps, R, L, delta, d, n_ada + more) <= ada


def test_adagrad_bound_can_rise_for_small_n() -> None:
    # why the monotonicity above needs large enough n: ln(1 + n R^2/eps^2)/sqrt(n) first grows with tiny R/eps
    assert adagrad_bound(1.0, 1.0, 0.1, 1.0, 0.0, 1, 4) > adagrad_bound(1.0, 1.0, 0.1, 1.0, 0.0, 1, 1)


# ------------------------------------------------------------------------------------------- invalid input

GL = {"step_sizes": [0.1, 0.2], "L": 2.0, "sigma2": 1.0, "delta": 1.0}
DEC = {"L": 2.0, "sigma2": 1.0, "delta": 1.0, "c_gamma": 0.5, "n": 10}
CONST = {"L": 2.0, "sigma2": 1.0, "delta": 1.0, "n": 10}
ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "R": 1.0, "L": 2.0, "delta": 1.0, "d": 10, "n": 100}
ADAGRAD = {"lr": 1e-2, "eps": 1e-10, "R": 1.0, "L": 2.0, "delta": 1.0, "d": 10, "n": 100}
NOISE = {"sigma2_x": 1.0, "sigma2_eps": 1.0, "batch_size": 4, "samples": 2}
VAE = {"n": [1, 2], "lstar": 1.0, "layers": 2, "a": 1.0, "d": 3, "beta1": 0.9}
IWAE = {"n": [1, 2], "lstar_k": 1.0, "d": 3, "batch_size": 2, "samples": 2}
RATIO = {"sigma2_x": 1.0, "sigma2_eps": 1.0, "from_bk": (4, 1), "to_bk": (8, 1)}
ALLOC = {"budget": 100, "sigma2_x": 1.0, "sigma2_eps": 1.0, "batch_sizes": [1, 2], "samples": [1, 2],
         "bound": lambda B, K, n, sigma2: sigma2 + 1 / n}

INVALID = [
    (noise_variance, NOISE, {"sigma2_x": -1.0}, "sigma2_x"),
    (noise_variance, NOISE, {"sigma2_eps": -1.0}, "sigma2_eps"),
    (noise_variance, NOISE, {"batch_size": 0}, "batch_size"),
    (noise_variance, NOISE, {"samples": 0}, "samples"),
    (noise_variance, NOISE, {"samples": 1.5}, "samples"),
    (ghadimi_lan, GL, {"L": 0.0}, "L"),
    (ghadimi_lan, GL, {"sigma2": -1.0}, "sigma2"),
    (ghadimi_lan, GL, {"delta": -1.0}, "delta"),
    (ghadimi_lan, GL, {"step_sizes": [0.1, 1.0]}, "step_sizes"),  # 1.0 = 2/L
    (ghadimi_lan, GL, {"step_sizes": [0.0]}, "step_sizes"),
    (ghadimi_lan, GL, {"step_sizes": []}, "step_sizes"),
    (ghadimi_lan_curve, GL, {"step_sizes": [1.5]}, "step_sizes"),
    (ghadimi_lan_curve, GL, {"L": -2.0}, "L"),
    (sgd_decreasing_bound, DEC, {"L": -1.0}, "L"),
    (sgd_decreasing_bound, DEC, {"sigma2": -1.0}, "sigma2"),
    (sgd_decreasing_bound, DEC, {"delta": -1.0}, "delta"),
    (sgd_decreasing_bound, DEC, {"c_gamma": 0.6}, "c_gamma"),  # > 1/L
    (sgd_decreasing_bound, DEC, {"c_gamma": 0.0}, "c_gamma"),
    (sgd_decreasing_bound, DEC, {"n": 0}, "n"),
    (sgd_constant_bound, CONST, {"L": 0.0}, "L"),
    (sgd_constant_bound, CONST, {"sigma2": -1.0}, "sigma2"),
    (sgd_constant_bound, CONST, {"delta": math.nan}, "delta"),
    (sgd_constant_bound, CONST, {"n": 0}, "n"),
    (sgd_constant_step, CONST, {"L": -1.0}, "L"),
    (sgd_constant_step, CONST, {"n": 0}, "n"),
    (adam_bound, ADAM, {"lr": 0.0}, "lr"),
    (adam_bound, ADAM, {"beta1": 0.9995}, "beta1"),  # >= beta2
    (adam_bound, ADAM, {"beta1": -0.1}, "beta1"),
    (adam_bound, ADAM, {"beta2": 1.0}, "beta2"),
    (adam_bound, ADAM, {"eps": 0.0}, "eps"),
    (adam_bound, ADAM, {"R": 0.0}, "R"),
    (adam_bound, ADAM, {"L": 0.0}, "L"),
    (adam_bound, ADAM, {"delta": -1.0}, "delta"),
    (adam_bound, ADAM, {"d": 0}, "d"),
    (adam_bound, ADAM, {"n": 9}, "n"),  # beta1 / (1 - beta1) = 9
    (adagrad_bound, ADAGRAD, {"lr": -1.0}, "lr"),
    (adagrad_bound, ADAGRAD, {"eps": 0.0}, "eps"),
    (adagrad_bound, ADAGRAD, {"R": -1.0}, "R"),
    (adagrad_bound, ADAGRAD, {"L": 0.0}, "L"),
    (adagrad_bound, ADAGRAD, {"delta": -1.0}, "delta"),
    (adagrad_bound, ADAGRAD, {"d": 0}, "d"),
    (adagrad_bound, ADAGRAD, {"n": 0}, "n"),
    (vae_adam_basis, VAE, {"n": [0, 1]}, "n"),
    (vae_adam_basis, VAE, {"lstar": -1.0}, "lstar"),
    (vae_adam_basis, VAE, {"layers": 0}, "layers"),
    (vae_adam_basis, VAE, {"a": 0.0}, "a"),
    (vae_adam_basis, VAE, {"d": 0}, "d"),
    (vae_adam_basis, VAE, {"beta1": 1.0}, "beta1"),
    (iwae_basis, IWAE, {"n": []}, "n"),
    (iwae_basis, IWAE, {"lstar_k": -1.0}, "lstar_k"),
    (iwae_basis, IWAE, {"d": 0}, "d"),
    (iwae_basis, IWAE, {"batch_size": 0}, "batch_size"),
    (iwae_basis, IWAE, {"samples": 0}, "samples"),
    (fit_shape, {"basis": [[1.0, 2.0]], "values": [1.0]}, {"values": [0.0]}, "values"),
    (fit_shape, {"basis": [[1.0, 2.0]], "values": [1.0]}, {"values": [1.0, 2.0]}, "values"),
    (fit_shape, {"basis": [[1.0, 2.0]], "values": [1.0]}, {"basis": [1.0, 2.0]}, "basis"),
    (shape_curve, {"basis": [[1.0, 2.0]], "coefficients": [1.0, 1.0]}, {"coefficients": [1.0]}, "coefficients"),
    (predict_noise_ratio, RATIO, {"sigma2_x": -1.0}, "sigma2_x"),
    (predict_noise_ratio, RATIO, {"sigma2_eps": -1.0}, "sigma2_eps"),
    (predict_noise_ratio, RATIO, {"sigma2_x": 0.0, "sigma2_eps": 0.0}, "sigma2_x"),
    (predict_noise_ratio, RATIO, {"from_bk": (0, 1)}, "from_bk"),
    (predict_noise_ratio, RATIO, {"to_bk": (4,)}, "to_bk"),
    (best_allocation, ALLOC, {"budget": 0}, "budget"),
    (best_allocation, ALLOC, {"budget": 1, "batch_sizes": [2], "samples": [2]}, "budget"),
    (best_allocation, ALLOC, {"sigma2_x": -1.0}, "sigma2_x"),
    (best_allocation, ALLOC, {"sigma2_eps": -1.0}, "sigma2_eps"),
    (best_allocation, ALLOC, {"bound": 1.0}, "bound"),
    (best_allocation, ALLOC, {"bound": lambda B, K, n, sigma2: math.nan}, "bound"),
    (best_allocation, ALLOC, {"batch_sizes": []}, "batch_sizes"),
    (best_allocation, ALLOC, {"batch_sizes": [0]}, "batch_sizes"),
    (best_allocation, ALLOC, {"samples": []}, "samples"),
]


@pytest.mark.parametrize(("function", "valid", "change", "name"), INVALID,
                         ids=[f"{f.__name__}-{'-'.join(c)}" for f, _, c, _ in INVALID])
def test_invalid_input_names_the_argument(function, valid, change, name) -> None:
    function(**valid)  # the unchanged arguments are accepted
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        function(**{**valid, **change})

"""Explicit convergence bounds (docs/theory.md sections 3 and 4) as pure functions of floats and numpy arrays.

References:
- Ghadimi & Lan, *Stochastic first- and zeroth-order methods for nonconvex stochastic programming*,
  SIAM J. Optim. 2013 (randomized SGD, Theorem 2.1 and Corollary 2.2).
- Défossez, Bottou, Bach, Usunier, *A Simple Convergence Proof of Adam and Adagrad*, TMLR 2022
  (Theorem 1: Adagrad, Theorem 2: Adam with momentum).
- Surendran, Godichon-Baggioni, Le Corff, *Theoretical Convergence Guarantees for Variational
  Autoencoders*, AISTATS 2025: the O(.) shapes of the VAE/IWAE rates, whose constants are fitted here.

Notation: ``L`` smoothness constant, ``sigma2`` variance of the stochastic gradient, ``delta`` the gap
f(x_1) - f_inf, ``n`` the number of iterations. Every function raises ValueError whose message starts
with the name of the offending argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import nnls

FloatArray = NDArray[np.float64]

# Relative slack on c_gamma <= 1/L, so that a caller passing c_gamma = 1 / L is never refused by rounding.
_STEP_RTOL = 1e-12


# ---------------------------------------------------------------------------------------------- validation


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _positive(name: str, value: float) -> float:
    value = _finite(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _nonnegative(name: str, value: float) -> float:
    value = _finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _count(name: str, value: int) -> int:
    try:
        integral = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        integral = False
    if not integral:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _unit_interval(name: str, value: float, *, low_open: bool = False) -> float:
    """value in [0, 1) (or (0, 1) when low_open)."""
    value = _finite(name, value)
    if value >= 1 or value < 0 or (low_open and value == 0):
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def _iterations(name: str, n: ArrayLike) -> FloatArray:
    values = np.asarray(n, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 1):
        raise ValueError(f"{name} must hold finite values >= 1")
    return values


# ---------------------------------------------------------------------------------------------- noise model


def noise_variance(sigma2_x: float, sigma2_eps: float, batch_size: int, samples: int) -> float:
    """sigma^2(B, K) = sigma2_x / B + sigma2_eps / (B K) (docs/theory.md section 4).

    Between-example variance sigma2_x divided by the batch size B, plus the Monte Carlo variance of one
    sample sigma2_eps divided by the B K samples drawn per step.
    """
    sigma2_x = _nonnegative("sigma2_x", sigma2_x)
    sigma2_eps = _nonnegative("sigma2_eps", sigma2_eps)
    batch_size = _count("batch_size", batch_size)
    samples = _count("samples", samples)
    return sigma2_x / batch_size + sigma2_eps / (batch_size * samples)


# ---------------------------------------------------------------------------------------------- SGD


def _ghadimi_lan_terms(step_sizes: ArrayLike, L: float, sigma2: float, delta: float
                       ) -> tuple[FloatArray, FloatArray, float]:
    """Validated (per-step numerator increments L sigma2 gamma_k^2, denominators 2 gamma_k - L gamma_k^2, 2 delta)."""
    L = _positive("L", L)
    sigma2 = _nonnegative("sigma2", sigma2)
    delta = _nonnegative("delta", delta)
    gammas = np.asarray(step_sizes, dtype=np.float64)
    if gammas.ndim != 1 or gammas.size == 0:
        raise ValueError(f"step_sizes must be a non-empty 1-D array, got shape {gammas.shape}")
    if not np.all(np.isfinite(gammas)) or np.any(gammas <= 0) or np.any(gammas >= 2.0 / L):
        raise ValueError(f"step_sizes must lie in (0, 2/L) = (0, {2.0 / L:.6g}), got range "
                         f"[{np.nanmin(gammas):.6g}, {np.nanmax(gammas):.6g}]")
    return L * sigma2 * gammas**2, 2.0 * gammas - L * gammas**2, 2.0 * delta


def ghadimi_lan(step_sizes: ArrayLike, L: float, sigma2: float, delta: float) -> float:
    """Randomized SGD bound of Ghadimi & Lan (SIAM J. Optim. 2013, Theorem 2.1).

    With P(R = k) proportional to 2 gamma_k - L gamma_k^2 and 0 < gamma_k < 2/L:
    E ||grad f(x_R)||^2 <= (2 delta + L sigma2 sum_k gamma_k^2) / sum_k (2 gamma_k - L gamma_k^2).
    """
    noise, weights, gap = _ghadimi_lan_terms(step_sizes, L, sigma2, delta)
    return float((gap + noise.sum()) / weights.sum())


def ghadimi_lan_curve(step_sizes: ArrayLike, L: float, sigma2: float, delta: float) -> FloatArray:
    """``ghadimi_lan`` after each number of steps: element n - 1 uses the first n step sizes (cumulative sums)."""
    noise, weights, gap = _ghadimi_lan_terms(step_sizes, L, sigma2, delta)
    return (gap + np.cumsum(noise)) / np.cumsum(weights)


def sgd_decreasing_bound(L: float, sigma2: float, delta: float, c_gamma: float, n: int) -> float:
    """Closed form for gamma_k = c_gamma / sqrt(k), k = 1..n, c_gamma <= 1/L, P(R = k) ~ gamma_k (docs/theory.md s. 4).

    E ||grad f(x_R)||^2 <= [2 delta + L sigma2 c_gamma^2 (1 + ln n)] / (2 c_gamma (sqrt(n + 1) - 1)).
    From Ghadimi & Lan (2013): gamma_k <= 1/L gives 2 gamma_k - L gamma_k^2 >= gamma_k, then
    sum_k 1/k <= 1 + ln n and sum_k 1/sqrt(k) >= 2 (sqrt(n + 1) - 1). It upper-bounds ``ghadimi_lan``.
    """
    L = _positive("L", L)
    sigma2 = _nonnegative("sigma2", sigma2)
    delta = _nonnegative("delta", delta)
    c_gamma = _positive("c_gamma", c_gamma)
    n = _count("n", n)
    if c_gamma > (1.0 / L) * (1.0 + _STEP_RTOL):
        raise ValueError(f"c_gamma must be <= 1/L = {1.0 / L:.6g}, got {c_gamma}")
    numerator = 2.0 * delta + L * sigma2 * c_gamma**2 * (1.0 + math.log(n))
    return numerator / (2.0 * c_gamma * (math.sqrt(n + 1.0) - 1.0))


def sgd_constant_step(L: float, sigma2: float, delta: float, n: int) -> float:
    """Ghadimi & Lan's constant step (Corollary 2.2): gamma = min(1/L, sqrt(2 delta / L) / (sigma sqrt n)).

    sigma = sqrt(sigma2); sigma2 = 0 gives 1/L, delta = 0 gives 0 (already optimal: no step needed).
    """
    L = _positive("L", L)
    sigma2 = _nonnegative("sigma2", sigma2)
    delta = _nonnegative("delta", delta)
    n = _count("n", n)
    if sigma2 == 0:
        return 1.0 / L
    return min(1.0 / L, math.sqrt(2.0 * delta / L) / math.sqrt(sigma2 * n))


def sgd_constant_bound(L: float, sigma2: float, delta: float, n: int) -> float:
    """Bound at ``sgd_constant_step`` (Ghadimi & Lan 2013, Corollary 2.2 with D = D_f):

    E ||grad f(x_R)||^2 <= 2 L delta / n + 2 sigma sqrt(2 L delta) / sqrt n, sigma = sqrt(sigma2).
    """
    L = _positive("L", L)
    sigma2 = _nonnegative("sigma2", sigma2)
    delta = _nonnegative("delta", delta)
    n = _count("n", n)
    return 2.0 * L * delta / n + 2.0 * math.sqrt(sigma2) * math.sqrt(2.0 * L * delta) / math.sqrt(n)


# ---------------------------------------------------------------------------------------------- Adam / Adagrad


def adam_bound(lr: float, beta1: float, beta2: float, eps: float, R: float, L: float, delta: float, d: int,
               n: int) -> float:
    """Adam bound of Défossez, Bottou, Bach, Usunier (TMLR 2022, Theorem 2) for the recursion they analyse, which
    is :class:`vaeconverge.optim.AdamDefossez`'s (``eps`` is its epsilon, inside the square root).

    Their Adam: m_n = b1 m + g, v_n = b2 v + g^2, x -= alpha_n m_n / sqrt(eps + v_n),
    alpha_n = alpha (1 - b1) sqrt((1 - b2^n) / (1 - b2)), alpha = ``lr``; ||g||_inf <= R; with N_t = n - b1 / (1 - b1),
    E ||grad F(x_tau)||^2 <= 2 R delta / (alpha N_t)
                             + E1 [ ln(1 + R^2 / ((1 - b2) eps)) / N_t - (n / N_t) ln b2 ],
    E1 = alpha d R L (1 - b1) / ((1 - b1/b2)(1 - b2)) + 12 d R^2 sqrt(1 - b1) / ((1 - b1/b2)^{3/2} sqrt(1 - b2))
         + 2 alpha^2 d L^2 b1 / ((1 - b1/b2)(1 - b2)^{3/2}).
    Requires 0 <= b1 < b2 < 1 and n > b1 / (1 - b1).
    """
    lr = _positive("lr", lr)
    beta1 = _unit_interval("beta1", beta1)
    beta2 = _unit_interval("beta2", beta2, low_open=True)
    eps = _positive("eps", eps)
    R = _positive("R", R)
    L = _positive("L", L)
    delta = _nonnegative("delta", delta)
    d = _count("d", d)
    n = _count("n", n)
    if beta1 >= beta2:
        raise ValueError(f"beta1 must be < beta2, got beta1 = {beta1}, beta2 = {beta2}")
    n_t = n - beta1 / (1.0 - beta1)
    if n_t <= 0:
        raise ValueError(f"n must exceed beta1 / (1 - beta1) = {beta1 / (1.0 - beta1):.6g}, got {n}")
    ratio = 1.0 - beta1 / beta2
    e1 = (lr * d * R * L * (1.0 - beta1) / (ratio * (1.0 - beta2))
          + 12.0 * d * R**2 * math.sqrt(1.0 - beta1) / (ratio**1.5 * math.sqrt(1.0 - beta2))
          + 2.0 * lr**2 * d * L**2 * beta1 / (ratio * (1.0 - beta2) ** 1.5))
    log_term = math.log1p(R**2 / ((1.0 - beta2) * eps)) / n_t - (n / n_t) * math.log(beta2)
    return 2.0 * R * delta / (lr * n_t) + e1 * log_term


def adagrad_bound(lr: float, eps: float, R: float, L: float, delta: float, d: int, n: int) -> float:
    """Adagrad bound of Défossez et al. (TMLR 2022, Theorem 1) for the recursion they analyse, which is
    :class:`vaeconverge.optim.AdagradDefossez`'s (``eps`` is its epsilon, inside the square root).

    Their Adagrad: x -= alpha g / sqrt(eps + sum of g^2), alpha = ``lr``; ||g||_inf <= R:
    E ||grad F(x_tau)||^2 <= 2 R delta / (alpha sqrt n) + (4 d R^2 + alpha d R L) ln(1 + n R^2 / eps) / sqrt n,
    tau uniform on the n iterates.
    """
    lr = _positive("lr", lr)
    eps = _positive("eps", eps)
    R = _positive("R", R)
    L = _positive("L", L)
    delta = _nonnegative("delta", delta)
    d = _count("d", d)
    n = _count("n", n)
    root_n = math.sqrt(n)
    return 2.0 * R * delta / (lr * root_n) + (4.0 * d * R**2 + lr * d * R * L) * math.log1p(n * R**2 / eps) / root_n


# ---------------------------------------------------------------------------------------------- paper shapes


def vae_adam_basis(n: ArrayLike, lstar: float, layers: int, a: float, d: int, beta1: float) -> FloatArray:
    """Columns of the deep Gaussian VAE + Adam rate (Surendran et al., AISTATS 2025), constants left free:

    [lstar / sqrt n, N a^{2(N-1)} d ln n / ((1 - beta1) sqrt n)], N = ``layers``; shape (len(n), 2).
    """
    steps = _iterations("n", n)
    lstar = _nonnegative("lstar", lstar)
    layers = _count("layers", layers)
    a = _positive("a", a)
    d = _count("d", d)
    beta1 = _unit_interval("beta1", beta1)
    root = np.sqrt(steps)
    noise = layers * a ** (2 * (layers - 1)) * d * np.log(steps) / ((1.0 - beta1) * root)
    return np.column_stack([lstar / root, noise])


def iwae_basis(n: ArrayLike, lstar_k: float, d: int, batch_size: int, samples: int) -> FloatArray:
    """Columns of the IWAE rate (Surendran et al., AISTATS 2025), constants left free:

    [lstar_k / sqrt n, d ln n / (B K sqrt n)], B = ``batch_size``, K = ``samples``; shape (len(n), 2).
    """
    steps = _iterations("n", n)
    lstar_k = _nonnegative("lstar_k", lstar_k)
    d = _count("d", d)
    batch_size = _count("batch_size", batch_size)
    samples = _count("samples", samples)
    root = np.sqrt(steps)
    return np.column_stack([lstar_k / root, d * np.log(steps) / (batch_size * samples * root)])


def _basis_matrix(basis: ArrayLike) -> FloatArray:
    matrix = np.asarray(basis, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"basis must be a non-empty 2-D array (points x terms), got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("basis must be finite")
    return matrix


def fit_shape(basis: ArrayLike, values: ArrayLike) -> FloatArray:
    """Non-negative coefficients c minimising sum_i ((basis_i . c - y_i) / y_i)^2 (scipy.optimize.nnls).

    The residuals are relative (each row divided by its measured value y_i > 0), so a curve spanning
    decades, read on a log scale, is fitted evenly along its length rather than only where it is largest.
    Columns are rescaled to unit norm before the solve (and the coefficients back), for conditioning.
    """
    matrix = _basis_matrix(basis)
    target = np.asarray(values, dtype=np.float64)
    if target.ndim != 1 or target.shape[0] != matrix.shape[0]:
        raise ValueError(f"values must be 1-D with one entry per basis row ({matrix.shape[0]}), got {target.shape}")
    if not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise ValueError("values must be finite and > 0 (the fit is in relative terms)")
    relative = matrix / target[:, None]
    scale = np.linalg.norm(relative, axis=0)
    scale[scale == 0] = 1.0
    coefficients, _ = nnls(relative / scale, np.ones_like(target))
    return coefficients / scale


def shape_curve(basis: ArrayLike, coefficients: ArrayLike) -> FloatArray:
    """The fitted shape basis @ coefficients, e.g. c1 * column 1 + c2 * column 2."""
    matrix = _basis_matrix(basis)
    coef = np.asarray(coefficients, dtype=np.float64)
    if coef.shape != (matrix.shape[1],):
        raise ValueError(f"coefficients must have shape ({matrix.shape[1]},), got {coef.shape}")
    return matrix @ coef


# ---------------------------------------------------------------------------------------------- prediction


def _pair(name: str, bk: tuple[int, int]) -> tuple[int, int]:
    try:
        batch_size, samples = bk
        return _count(f"{name} batch size", batch_size), _count(f"{name} samples", samples)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a pair (B, K) of integers >= 1, got {bk!r}") from error


def predict_noise_ratio(sigma2_x: float, sigma2_eps: float, from_bk: tuple[int, int], to_bk: tuple[int, int]
                        ) -> float:
    """sigma^2(B', K') / sigma^2(B, K) for (B, K) = from_bk and (B', K') = to_bk (see ``noise_variance``).

    The factor by which the paper's noise term (the d ln n / (B K sqrt n) column) moves between configurations.
    """
    sigma2_x = _nonnegative("sigma2_x", sigma2_x)
    sigma2_eps = _nonnegative("sigma2_eps", sigma2_eps)
    source = _pair("from_bk", from_bk)
    target = _pair("to_bk", to_bk)
    if sigma2_x == 0 and sigma2_eps == 0:
        raise ValueError("sigma2_x and sigma2_eps are both 0: the noise ratio is undefined")
    return noise_variance(sigma2_x, sigma2_eps, *target) / noise_variance(sigma2_x, sigma2_eps, *source)


@dataclass(frozen=True)
class Allocation:
    """One way to spend a budget of per-example gradient evaluations: B x K per step, for ``steps`` steps."""

    batch_size: int
    samples: int
    steps: int
    bound: float


def best_allocation(budget: int, sigma2_x: float, sigma2_eps: float, batch_sizes: Sequence[int],
                    samples: Sequence[int], bound: Callable[[int, int, int, float], float]
                    ) -> tuple[Allocation, list[Allocation]]:
    """The (B, K) minimising ``bound`` at a fixed budget of B K n sample-gradients.

    ``bound(B, K, n, sigma2)`` is the bound of the run's own theorem for that allocation (so that the allocation is
    ranked by the run's own bound, not another), e.g. ``lambda B, K, n, s2: sgd_decreasing_bound(L, s2, delta, c, n)``.
    For each B in ``batch_sizes`` and K in ``samples``: n = budget // (B K) steps (skipped when n < 1),
    sigma2 = noise_variance(sigma2_x, sigma2_eps, B, K). Returns (best, every evaluated allocation sorted
    by bound); ties go to the smaller B K, then the smaller B.
    """
    budget = _count("budget", budget)
    sigma2_x = _nonnegative("sigma2_x", sigma2_x)
    sigma2_eps = _nonnegative("sigma2_eps", sigma2_eps)
    if len(batch_sizes) == 0:
        raise ValueError("batch_sizes must not be empty")
    if len(samples) == 0:
        raise ValueError("samples must not be empty")
    if not callable(bound):
        raise ValueError(f"bound must be a callable (B, K, n, sigma2) -> float, got {bound!r}")
    batch_grid = sorted({_count("batch_sizes", b) for b in batch_sizes})
    sample_grid = sorted({_count("samples", k) for k in samples})
    table = []
    for batch_size in batch_grid:
        for k in sample_grid:
            steps = budget // (batch_size * k)
            if steps < 1:
                continue
            sigma2 = noise_variance(sigma2_x, sigma2_eps, batch_size, k)
            value = float(bound(batch_size, k, steps, sigma2))
            if math.isnan(value):
                raise ValueError(f"bound returned NaN for B = {batch_size}, K = {k}, n = {steps}")
            table.append(Allocation(batch_size, k, steps, value))
    if not table:
        raise ValueError(f"budget = {budget} is smaller than every B * K of the grid")
    table.sort(key=lambda a: (a.bound, a.batch_size * a.samples, a.batch_size))
    return table[0], table

"""Constants of the convergence bounds, each erring high by a stated criterion: smoothness L by Lanczos on
Hessian-vector products with a safety margin, the gradient-noise split sigma_x^2 / sigma_eps^2 as upper
confidence bounds, and R as the largest gradient coordinate seen; checked against dense Hessians, plain
autograd loops, brute-force minibatch variances and synthetic estimators with known variances."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import make_linear_vae
from scipy.sparse.linalg import ArpackNoConvergence
from torch import nn
from torch.func import functional_call, grad, jvp

from vaeconverge.config import RunConfig
from vaeconverge.diagnostics import constants
from vaeconverge.diagnostics.constants import (
    L_MARGIN,
    LANCZOS_TOL,
    NOISE_UCB_Z,
    GradientNoise,
    VarianceParts,
    decompose_variance,
    example_gradient_draws,
    fixed_noise_loss,
    gradient_noise,
    hessian_norm,
    noise_from_gradients,
    per_example_gradients,
    smoothness,
    smoothness_estimate,
)
from vaeconverge.models import build_vae
from vaeconverge.objectives import ELBO, IWAE, draw_noise

F64 = torch.float64


# ---------------------------------------------------------------- helpers


class _BatchLoss(nn.Module):
    """-(1/n) sum_i objective(x_i) with fixed noise as a module forward, for functional_call in the oracles."""

    def __init__(self, model: nn.Module, objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return -self.objective(self.model, x, eps).mean()


class _ExactLoss(nn.Module):
    """-(1/n) sum_i ELBO(x_i) of a Linear VAE, the expectation over the noise in closed form."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.model.exact_elbo(x).mean()


def _state(wrapper: nn.Module) -> tuple[list[str], list[torch.Tensor], dict[str, torch.Tensor]]:
    names = [name for name, p in wrapper.named_parameters() if p.requires_grad]
    values = [p.detach() for p in wrapper.parameters() if p.requires_grad]
    frozen = {name: b for name, b in wrapper.named_buffers()}
    frozen.update({name: p.detach() for name, p in wrapper.named_parameters() if not p.requires_grad})
    return names, values, frozen


def module_loss(wrapper: nn.Module, *args):
    """(loss of a parameter dict, the trainable parameters) of ``wrapper(*args)`` through functional_call."""
    names, values, frozen = _state(wrapper)

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(wrapper, (params, frozen), args)

    return loss, dict(zip(names, values, strict=True))


def dense_hessian(wrapper: nn.Module, *args) -> torch.Tensor:
    """The dense Hessian of ``wrapper(*args)`` over its flattened trainable parameters, by
    ``torch.autograd.functional.hessian``."""
    names, values, frozen = _state(wrapper)

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split([v.numel() for v in values])
        params = {n: piece.view_as(v) for n, piece, v in zip(names, pieces, values, strict=True)}
        return functional_call(wrapper, (params, frozen), args)

    flat = torch.cat([v.reshape(-1) for v in values])
    return torch.autograd.functional.hessian(flat_loss, flat)


def top_abs_eigenvalue(hessian: torch.Tensor) -> float:
    return torch.linalg.eigvalsh(hessian).abs().max().item()


def dense_hessian_top(model, objective, x: torch.Tensor, eps: torch.Tensor) -> float:
    """Largest |eigenvalue| of the dense Hessian of the fixed-noise batch loss."""
    return top_abs_eigenvalue(dense_hessian(_BatchLoss(model, objective), x, eps))


def assert_safe_and_tight(value: float, exact: float) -> None:
    """The documented criterion of smoothness_estimate: at least the exact top |eigenvalue|, by no more than
    the margin (up to 1e-4 for the tolerance)."""
    assert exact <= value <= L_MARGIN * exact * (1 + 1e-4)


def tiny_mlp_vae(activation: str, data_dim: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    config = RunConfig(model="mlp", hidden=8, depth=1, latent_dim=2, likelihood="bernoulli", activation=activation)
    return build_vae(config, data_dim).double()


def trainable(model) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def no_reverse_over_reverse(monkeypatch) -> None:
    """Make the reverse-over-reverse fallback fail, so a passing test proves forward-over-reverse ran."""

    def fail(*args, **kwargs):
        raise AssertionError("forward-over-reverse Hessian-vector products should have worked")

    monkeypatch.setattr(constants, "_reverse_over_reverse_hvp", fail)


# ---------------------------------------------------------------- Lanczos


SPLIT_SHAPES = [(3,), (2, 4), (5,), (1, 1, 2)]  # 18 coordinates in four tensors of different shapes


def quadratic(spectrum: torch.Tensor, seed: int = 3):
    """0.5 p^T A p over parameters split like SPLIT_SHAPES, A with eigenvalues ``spectrum``."""
    gen = torch.Generator().manual_seed(seed)
    dim = len(spectrum)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    a = q @ torch.diag(spectrum.to(F64)) @ q.T
    a = 0.5 * (a + a.T)
    params = {f"p{i}": torch.randn(shape, generator=gen, dtype=F64) for i, shape in enumerate(SPLIT_SHAPES)}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([t.reshape(-1) for t in p.values()])
        return 0.5 * flat @ a @ flat

    return loss, params


@pytest.mark.parametrize("top", [7.0, -7.0])
def test_hessian_norm_recovers_top_abs_eigenvalue_of_quadratic(top, monkeypatch):
    no_reverse_over_reverse(monkeypatch)
    dim = sum(math.prod(s) for s in SPLIT_SHAPES)
    # |lambda_2 / lambda_1| = 6.9 / 7 with the opposite sign: close in magnitude, so that a start that stopped
    # early, a sign error or a signed maximum would all show.
    spectrum = torch.cat([torch.tensor([top, -0.9857 * top]), torch.linspace(-3.0, 3.0, dim - 2)])
    loss, params = quadratic(spectrum)
    value = hessian_norm(loss, params, generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(abs(top), rel=1e-6)
    estimate = smoothness_estimate(loss, params, generator=torch.Generator().manual_seed(0))
    assert L_MARGIN * value * (1 - LANCZOS_TOL) <= estimate <= L_MARGIN * value  # a Ritz value: from below


def test_hessian_norm_is_deterministic_given_the_generator_and_draws_the_start_first():
    dim = sum(math.prod(s) for s in SPLIT_SHAPES)
    loss, params = quadratic(torch.linspace(-2.0, 5.0, dim))
    gen = torch.Generator().manual_seed(4)
    value = hessian_norm(loss, params, generator=gen)
    after = torch.randn(3, generator=gen)

    again = torch.Generator().manual_seed(4)
    assert hessian_norm(loss, params, generator=again) == value  # bit for bit
    reference = torch.Generator().manual_seed(4)
    torch.randn(dim, generator=reference, dtype=F64)  # the documented draw: the start vector, n normals
    assert torch.equal(after, torch.randn(3, generator=reference))


@pytest.mark.parametrize("values", [[1.3], [1.187, -1.452]], ids=["one", "two"])
def test_hessian_norm_with_one_or_two_parameters_is_exact(values):
    params = {"a": torch.tensor(values, dtype=F64)}

    def loss(p):  # one parameter: a^3, Hessian 6a; two: a0^2 a1 + a1^3, Hessian [[2 a1, 2 a0], [2 a0, 6 a1]]
        a = p["a"]
        return a[0] ** 3 if len(a) == 1 else a[0] ** 2 * a[1] + a[1] ** 3

    a = torch.tensor(values, dtype=F64)
    exact = (6 * a.abs()).item() if len(a) == 1 else top_abs_eigenvalue(
        torch.stack([torch.stack([2 * a[1], 2 * a[0]]), torch.stack([2 * a[0], 6 * a[1]])]))
    gen = torch.Generator().manual_seed(0)
    assert hessian_norm(loss, params, generator=gen) == pytest.approx(exact, rel=1e-12)
    reference = torch.Generator().manual_seed(0)
    torch.randn(len(values), generator=reference, dtype=F64)  # the start vector is drawn on this path too
    assert torch.equal(torch.randn(2, generator=gen), torch.randn(2, generator=reference))


def test_hessian_norm_of_a_zero_or_non_finite_hessian():
    params = {"a": torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=F64)}
    assert hessian_norm(lambda p: (2.0 * p["a"]).sum(), params, torch.Generator().manual_seed(1)) == 0.0
    nan = hessian_norm(lambda p: (math.nan * p["a"]).square().sum(), params, torch.Generator().manual_seed(1))
    assert math.isnan(nan)
    with pytest.raises(ValueError):
        hessian_norm(lambda p: torch.zeros(()), {}, torch.Generator())
    with pytest.raises(ValueError):
        hessian_norm(lambda p: p["a"].sum(), params, torch.Generator(), tol=0.0)


def test_hessian_norm_reports_a_lanczos_that_did_not_converge(monkeypatch):
    def no_convergence(*args, **kwargs):
        raise ArpackNoConvergence("ARPACK error -1: No convergence", np.empty(0), np.empty((0, 0)))

    monkeypatch.setattr(constants, "eigsh", no_convergence)
    dim = sum(math.prod(s) for s in SPLIT_SHAPES)
    loss, params = quadratic(torch.linspace(-2.0, 5.0, dim))
    with pytest.raises(RuntimeError, match="did not find the Hessian's largest"):
        hessian_norm(loss, params, generator=torch.Generator().manual_seed(0))


def test_hessian_norm_falls_back_to_reverse_mode_without_forward_derivative():
    class Cube(torch.autograd.Function):
        """x^3 with a backward but no jvp: forward-mode AD cannot differentiate it."""

        @staticmethod
        def forward(x):
            return x**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    params = {"a": torch.tensor([1.0, -2.5, 0.5, 0.75], dtype=F64)}

    def loss(p):
        return Cube.apply(p["a"]).sum()

    with pytest.raises((NotImplementedError, RuntimeError)):
        jvp(grad(loss), (params,), ({"a": torch.ones(4, dtype=F64)},))
    value = hessian_norm(loss, params, generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(15.0, rel=1e-8)  # Hessian diag(6 a): top |eigenvalue| 6 x 2.5


@pytest.mark.parametrize("forward", [True, False], ids=["forward-over-reverse", "reverse-over-reverse"])
def test_hessian_norm_of_terms_is_that_of_their_sum(forward, monkeypatch):
    """A loss given as terms (each evaluated on its own, to bound memory) has the Hessian of their sum."""
    if not forward:
        def no_forward(*args, **kwargs):
            raise NotImplementedError("no forward-mode derivative")
        monkeypatch.setattr(constants, "jvp", no_forward)
    dim = sum(math.prod(s) for s in SPLIT_SHAPES)
    first, params = quadratic(torch.linspace(-2.0, 5.0, dim), seed=3)
    second, _ = quadratic(torch.linspace(-1.0, 3.0, dim), seed=4)  # a quadratic's Hessian is the same everywhere
    whole = hessian_norm(lambda p: first(p) + second(p), params, torch.Generator().manual_seed(0))
    split = hessian_norm([first, second], params, torch.Generator().manual_seed(0))
    assert split == pytest.approx(whole, rel=1e-9)
    assert whole != pytest.approx(hessian_norm(first, params, torch.Generator().manual_seed(0)), rel=1e-3)
    with pytest.raises(ValueError, match="no terms"):
        hessian_norm([], params)


@pytest.mark.parametrize("objective", [ELBO(samples=2), IWAE(samples=3)], ids=["elbo", "iwae"])
def test_fixed_noise_loss_in_chunks_sums_to_the_whole_with_the_same_draws(objective):
    model = tiny_mlp_vae("softclip")
    x = torch.rand(23, 4, generator=torch.Generator().manual_seed(12), dtype=F64)
    model.init_from_data_(x)
    (whole,), params = fixed_noise_loss(model, objective, x, torch.Generator().manual_seed(13))
    terms, _ = fixed_noise_loss(model, objective, x, torch.Generator().manual_seed(13), chunk=5)
    assert len(terms) == 5  # 5 + 5 + 5 + 5 + 3 examples
    assert sum(term(params) for term in terms) == pytest.approx(whole(params).item(), rel=1e-12)
    one = smoothness(model, objective, x, torch.Generator().manual_seed(14))
    assert smoothness(model, objective, x, torch.Generator().manual_seed(14), chunk=5) == pytest.approx(one, rel=1e-6)


# ---------------------------------------------------------------- smoothness


@pytest.mark.parametrize("learn_variance", [True, False], ids=["learned-c", "fixed-c"])
def test_smoothness_estimate_bounds_the_exact_hessian_along_an_sgd_trajectory(learn_variance, monkeypatch):
    """The Linear VAE's closed-form ELBO: at three points of a short SGD run the estimate lies between the
    exact top |eigenvalue| (dense Hessian) and L_MARGIN times it."""
    no_reverse_over_reverse(monkeypatch)
    model = make_linear_vae(data_dim=4, latent_dim=2, seed=6, learn_variance=learn_variance)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(7), dtype=F64) * 1.5 + 0.5
    wrapper = _ExactLoss(model)
    optimizer = torch.optim.SGD(trainable(model), lr=0.05)
    exact_values = []
    for step in range(41):
        if step % 20 == 0:
            loss, params = module_loss(wrapper, x)
            exact = top_abs_eigenvalue(dense_hessian(wrapper, x))
            assert_safe_and_tight(smoothness_estimate(loss, params, torch.Generator().manual_seed(step)), exact)
            assert hessian_norm(loss, params, torch.Generator().manual_seed(step)) == pytest.approx(exact, rel=1e-6)
            exact_values.append(exact)
        optimizer.zero_grad()
        wrapper(x).backward()
        optimizer.step()
    assert max(exact_values) > 1.05 * min(exact_values)  # the points differ: three checks, not one


@pytest.mark.parametrize("objective", [ELBO(samples=2), IWAE(samples=3)], ids=["elbo", "iwae"])
def test_smoothness_bounds_the_dense_hessian_on_linear_vae(objective, monkeypatch):
    no_reverse_over_reverse(monkeypatch)
    model = make_linear_vae(data_dim=3, latent_dim=2, seed=1)
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    before = [p.detach().clone() for p in model.parameters()]

    value = smoothness(model, objective, x, torch.Generator().manual_seed(5))
    # smoothness's documented draws with n <= max_examples: no subset, then the noise
    eps = draw_noise(objective.samples, len(x), model.latent_dim, torch.Generator().manual_seed(5), F64)
    assert_safe_and_tight(value, dense_hessian_top(model, objective, x, eps))
    assert smoothness(model, objective, x, torch.Generator().manual_seed(5)) == value  # deterministic
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_smoothness_uses_a_fixed_random_subset_beyond_max_examples():
    model = make_linear_vae(data_dim=3, latent_dim=2, seed=4)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    objective = ELBO(samples=1)

    value = smoothness(model, objective, x, torch.Generator().manual_seed(7), max_examples=10)
    gen = torch.Generator().manual_seed(7)
    subset = x[torch.randperm(len(x), generator=gen)[:10]]
    exact = dense_hessian_top(model, objective, subset, draw_noise(1, 10, model.latent_dim, gen, F64))
    full = dense_hessian_top(model, objective, x, draw_noise(1, 40, 2, gen, F64))

    assert_safe_and_tight(value, exact)
    assert abs(full - exact) > 0.03 * exact  # the subset matters beyond the margin: the check is informative


@pytest.mark.parametrize("activation", ["relu", "softclip"])
def test_smoothness_on_mlp_vae_bounds_the_dense_hessian(activation, monkeypatch):
    no_reverse_over_reverse(monkeypatch)  # forward-mode AD supports ReLU, soft-clipping and Bernoulli BCE
    model = tiny_mlp_vae(activation)
    x = torch.rand(20, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    model.init_from_data_(x)  # non-trivial buffers (input standardisation) must be passed along
    objective = ELBO(samples=2)

    value = smoothness(model, objective, x, torch.Generator().manual_seed(9))
    eps = draw_noise(2, len(x), model.latent_dim, torch.Generator().manual_seed(9), F64)
    assert_safe_and_tight(value, dense_hessian_top(model, objective, x, eps))


def test_smoothness_of_a_float32_model_bounds_its_float64_hessian():
    """float32 Hessian-vector products: the margin covers their rounding."""
    model = tiny_mlp_vae("softclip")
    x = torch.rand(20, 4, generator=torch.Generator().manual_seed(10), dtype=F64)
    model.init_from_data_(x)
    objective = ELBO(samples=1)
    eps = draw_noise(1, len(x), model.latent_dim, torch.Generator().manual_seed(11), F64)
    exact = dense_hessian_top(model, objective, x, eps)
    loss, params = module_loss(_BatchLoss(model.float(), objective), x.float(), eps.float())
    assert_safe_and_tight(smoothness_estimate(loss, params, torch.Generator().manual_seed(0)), exact)


# ---------------------------------------------------------------- variance decomposition


def synthetic_gradients(n: int, draws: int, gen: torch.Generator, dim: int = 5, s_x: float = 1.5,
                        s_e: float = 0.7) -> torch.Tensor:
    """mu + s_x u_i + s_e e_id: between-example variance dim s_x^2, Monte Carlo variance dim s_e^2."""
    mu = torch.randn(dim, generator=gen, dtype=F64) * 3.0
    u = torch.randn(n, 1, dim, generator=gen, dtype=F64)
    e = torch.randn(n, draws, dim, generator=gen, dtype=F64)
    return mu + s_x * u + s_e * e


@pytest.mark.parametrize(("n", "draws"), [(4000, 2), (2000, 4)])
def test_decompose_variance_recovers_known_variances(n, draws):
    parts = decompose_variance(synthetic_gradients(n, draws, torch.Generator().manual_seed(11)))
    # Relative standard errors: MC is an average of n * dim * (draws - 1) chi-square degrees of freedom,
    # sqrt(2 / (n dim (draws - 1))) <= 1%; between is a variance over n examples in dim coordinates,
    # about sqrt(2 / (n dim)) (1 + s_e^2 / (draws s_x^2)) <= 1.5%. 5% is over 3 standard errors for both.
    assert parts.mc == pytest.approx(5 * 0.7**2, rel=0.05)
    assert parts.between == pytest.approx(5 * 1.5**2, rel=0.05)
    # and the standard errors are those relative sizes
    assert parts.mc_se / parts.mc == pytest.approx(math.sqrt(2 / (n * 5 * (draws - 1))), rel=0.2)
    assert 0.5 * math.sqrt(2 / (n * 5)) < parts.between_se / parts.between < 2 * math.sqrt(2 / (n * 5))


def test_decompose_variance_is_a_mean_of_per_example_terms_with_their_standard_errors():
    gen = torch.Generator().manual_seed(13)
    grads = synthetic_gradients(50, 3, gen) * torch.linspace(0.5, 2.0, 50, dtype=F64)[:, None, None]
    n, draws = 50, 3
    parts = decompose_variance(grads)
    assert isinstance(parts, VarianceParts)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.mc = 0.0  # type: ignore[misc]
    per_mc = grads.var(dim=1).sum(-1)  # each example's unbiased variance across draws
    means = grads.mean(dim=1)
    terms = (means - means.mean(0)).square().sum(-1) * n / (n - 1) - per_mc / draws
    assert parts.mc == pytest.approx(per_mc.mean().item(), rel=1e-12)
    assert parts.mc_se == pytest.approx(per_mc.std().item() / math.sqrt(n), rel=1e-12)
    assert parts.between == pytest.approx(means.var(dim=0).sum().item() - parts.mc / draws, rel=1e-12)
    assert parts.between_se == pytest.approx(terms.std().item() / math.sqrt(n), rel=1e-12)
    assert parts.upper(2.0) == (parts.between + 2 * parts.between_se, parts.mc + 2 * parts.mc_se)
    assert parts.upper(0.0) == (parts.between, parts.mc)


def test_standard_errors_give_the_stated_coverage_on_synthetic_gradients():
    """200 synthetic sets of 100 examples x 2 draws with known variances: the standard errors match the spread
    of the estimates, and the upper bounds at NOISE_UCB_Z cover the truth (about 97.7%; at least 90%)."""
    gen = torch.Generator().manual_seed(14)
    true_between, true_mc = 3 * 1.0**2, 3 * 0.8**2
    fits = [decompose_variance(synthetic_gradients(100, 2, gen, dim=3, s_x=1.0, s_e=0.8)) for _ in range(200)]
    for part, truth in (("between", true_between), ("mc", true_mc)):
        estimates = np.array([getattr(f, part) for f in fits])
        errors = np.array([getattr(f, f"{part}_se") for f in fits])
        assert estimates.mean() == pytest.approx(truth, rel=0.05)
        assert 0.8 < errors.mean() / estimates.std(ddof=1) < 1.25
        covered = np.mean([f.upper(NOISE_UCB_Z)[part == "mc"] >= truth for f in fits])
        assert covered >= 0.9


def test_decompose_variance_without_between_example_spread_is_near_zero_and_clamped():
    gen = torch.Generator().manual_seed(12)
    grads = 2.0 + torch.randn(3000, 2, 5, generator=gen, dtype=F64)  # only Monte Carlo noise, variance 1 each
    parts = decompose_variance(grads)
    assert 0.0 <= parts.between < 0.05 * parts.mc
    assert parts.mc == pytest.approx(5.0, rel=0.05)
    assert parts.upper(NOISE_UCB_Z)[0] > parts.between  # the bound still allows some between-example spread


def test_decompose_variance_needs_two_examples_and_two_draws():
    with pytest.raises(ValueError):
        decompose_variance(torch.zeros(10, 1, 3))
    with pytest.raises(ValueError):
        decompose_variance(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError):
        decompose_variance(torch.zeros(10, 3))


# ---------------------------------------------------------------- per-example gradients


def _linear_fixed_variance():
    return make_linear_vae(data_dim=5, latent_dim=2, seed=3, learn_variance=False)  # log c is a buffer


def _mlp_softclip():
    model = tiny_mlp_vae("softclip", data_dim=5, seed=2)
    model.init_from_data_(torch.rand(30, 5, generator=torch.Generator().manual_seed(0), dtype=F64))
    return model


@pytest.mark.parametrize("objective", [ELBO(samples=2), IWAE(samples=3)], ids=["elbo", "iwae"])
@pytest.mark.parametrize("build", [make_linear_vae, _linear_fixed_variance, _mlp_softclip],
                         ids=["linear", "linear-fixed-c", "mlp-softclip"])
def test_per_example_gradients_match_autograd_loop(build, objective):
    model = build()
    n, draws = 6, 3
    x = torch.rand(n, 5, generator=torch.Generator().manual_seed(13), dtype=F64)
    params = trainable(model)
    n_params = sum(p.numel() for p in params)

    grads = per_example_gradients(model, objective, x, draws, torch.Generator().manual_seed(14))
    assert grads.shape == (n, draws, n_params)

    gen = torch.Generator().manual_seed(14)
    noise = [draw_noise(objective.samples, n, model.latent_dim, gen, F64) for _ in range(draws)]
    expected = torch.empty(n, draws, n_params, dtype=F64)
    for d, eps in enumerate(noise):
        for i in range(n):
            loss = -objective(model, x[i : i + 1], eps[:, i : i + 1]).sum()
            expected[i, d] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    torch.testing.assert_close(grads, expected, rtol=1e-10, atol=1e-10)

    batch_loss = sum(-objective(model, x, eps).mean() for eps in noise) / draws
    batch_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(batch_loss, params)])
    torch.testing.assert_close(grads.mean(dim=(0, 1)), batch_grad, rtol=1e-10, atol=1e-10)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- gradient noise


def test_gradient_noise_at_follows_the_noise_model():
    noise = GradientNoise(sigma2_x=3.0, sigma2_eps=8.0, R=1.0)
    assert noise.at(4, 2) == pytest.approx(3.0 / 4 + 8.0 / 8)


def test_gradient_noise_decreases_with_batch_and_samples():
    model = make_linear_vae(data_dim=5, latent_dim=2, seed=0)
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(15), dtype=F64)
    noise = gradient_noise(model, ELBO(samples=1), x, torch.Generator().manual_seed(16))
    assert noise.sigma2_x > 0 and noise.sigma2_eps > 0 and noise.R > 0
    for b in (1, 2, 8, 32):
        for k in (1, 2, 8):
            assert noise.at(2 * b, k) < noise.at(b, k)
            assert noise.at(b, 2 * k) < noise.at(b, k)


@pytest.mark.parametrize("examples_per_row", [1, 4])
def test_gradient_noise_is_the_upper_bounds_of_two_draws_and_the_largest_coordinate(examples_per_row):
    """With n <= max_examples the draws are the two noise draws; sigma2_x and sigma2_eps are the upper
    confidence bounds scaled to examples and single samples, R the largest |coordinate| of any row and draw."""
    model = make_linear_vae(data_dim=5, latent_dim=2, seed=5)
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(17), dtype=F64)
    objective = ELBO(samples=3)
    grads = per_example_gradients(model, objective, x, 2, torch.Generator().manual_seed(18))
    between, mc = decompose_variance(grads).upper(NOISE_UCB_Z)
    noise = noise_from_gradients(grads, objective.samples, examples_per_row=examples_per_row)
    assert noise.sigma2_x == pytest.approx(examples_per_row * between, rel=1e-12)
    assert noise.sigma2_eps == pytest.approx(examples_per_row * 3 * mc, rel=1e-12)
    bound = noise.R  # (a local name: ruff reads an upper-case attribute as a constant)
    assert bound == grads.abs().max().item()
    if examples_per_row == 1:
        assert gradient_noise(model, objective, x, torch.Generator().manual_seed(18)) == noise
    with pytest.raises(ValueError):
        noise_from_gradients(grads, 0)
    with pytest.raises(ValueError):
        noise_from_gradients(grads, 1, examples_per_row=0)


def test_R_bounds_every_minibatch_made_of_the_gradients_seen():
    """A minibatch gradient averages per-example gradients: 2000 minibatches of 1 to 32 of the rows, each
    example's gradient taken from either draw, stay within R."""
    model = make_linear_vae(data_dim=5, latent_dim=2, seed=3)
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(23), dtype=F64)
    gen = torch.Generator().manual_seed(24)
    grads = example_gradient_draws(model, ELBO(samples=1), x, gen)
    bound = noise_from_gradients(grads, 1).R
    for _ in range(2000):
        size = int(torch.randint(1, 33, (1,), generator=gen))
        rows = torch.randint(0, len(grads), (size,), generator=gen)
        draws = torch.randint(0, 2, (size,), generator=gen)
        assert grads[rows, draws].mean(0).abs().max().item() <= bound


def test_sigma2_eps_is_per_single_sample():
    """sigma_eps^2 = K x (MC variance of the K-sample ELBO gradient) does not depend on K: the K-sample
    gradient averages K i.i.d. single-sample ones. Estimates from 256 examples scatter by ~30% (a missing or
    inverted K factor would be off by 4 or 16)."""
    model = make_linear_vae(data_dim=5, latent_dim=2, seed=1)
    x = torch.randn(256, 5, generator=torch.Generator().manual_seed(19), dtype=F64)
    one, four = (gradient_noise(model, ELBO(samples=k), x, torch.Generator().manual_seed(20)) for k in (1, 4))
    assert 0.5 < four.sigma2_eps / one.sigma2_eps < 2.0


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_sigma2_eps_vanishes_with_deterministic_encoder(latent_dim):
    """log_diag = -40, off_diag = 0: z = mean(x) + e^-40 eps, so the noise leaves the objective and the
    gradients (to ~1e-17 relative) unchanged; the between-example part remains."""
    model = make_linear_vae(data_dim=5, latent_dim=latent_dim, seed=2)
    with torch.no_grad():
        model.encoder.log_diag.fill_(-40.0)
        model.encoder.off_diag.zero_()
    x = torch.randn(100, 5, generator=torch.Generator().manual_seed(21), dtype=F64)

    if latent_dim > 1:
        # The off-diagonal Cholesky entries enter z = mean + L eps unscaled: d z / d off_diag = eps, so their
        # gradient still carries the noise. Frozen, they leave only noise-free gradients.
        noisy = gradient_noise(model, ELBO(samples=1), x, torch.Generator().manual_seed(22))
        assert noisy.sigma2_eps > 1e-3
        model.encoder.off_diag.requires_grad_(False)

    noise = gradient_noise(model, ELBO(samples=1), x, torch.Generator().manual_seed(22))
    assert noise.sigma2_eps < 1e-20
    assert noise.sigma2_x > 1.0


# ---------------------------------------------------------------- against brute force


BRUTE_B, BRUTE_K, BRUTE_BATCHES = 8, 1, 3000


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def brute_force(request):
    """A Linear VAE on 256 examples: gradient_noise from its two draws per example, and the noise of 3000
    minibatch gradients at (B, K) = (8, 1), examples drawn with replacement and fresh noise, about the exact
    full gradient (the closed-form ELBO's)."""
    seed = request.param
    model = make_linear_vae(data_dim=5, latent_dim=2, seed=30 + seed)
    x = torch.randn(256, 5, generator=torch.Generator().manual_seed(40 + seed), dtype=F64) * 1.3
    objective = ELBO(samples=BRUTE_K)
    noise = gradient_noise(model, objective, x, torch.Generator().manual_seed(50 + seed))
    parts = decompose_variance(example_gradient_draws(model, objective, x, torch.Generator().manual_seed(50 + seed)))

    full_loss = -model.exact_elbo(x).mean()
    full = torch.cat([g.reshape(-1) for g in torch.autograd.grad(full_loss, trainable(model))])
    gen = torch.Generator().manual_seed(60 + seed)
    rows = torch.randint(0, len(x), (BRUTE_BATCHES * BRUTE_B,), generator=gen)
    per_example = per_example_gradients(model, objective, x[rows], 1, gen)[:, 0]
    minibatches = per_example.view(BRUTE_BATCHES, BRUTE_B, -1).mean(1)
    squared = (minibatches - full).square().sum(-1)
    # the minibatch gradients are unbiased for the full gradient (a check of the oracle)
    spread = minibatches.std(0) / math.sqrt(BRUTE_BATCHES)
    assert ((minibatches.mean(0) - full).abs() <= 4 * spread + 1e-12).all()
    return noise, parts, minibatches, squared.mean().item(), squared.std().item() / math.sqrt(BRUTE_BATCHES)


def test_noise_upper_bound_covers_the_brute_force_minibatch_noise(brute_force):
    noise, _, _, brute, brute_se = brute_force
    assert brute_se < 0.03 * brute  # so that the 5% tolerance, for the brute force's own error, is small
    assert noise.at(BRUTE_B, BRUTE_K) >= brute * (1 - 0.05)


def test_noise_point_estimate_is_close_to_the_brute_force_minibatch_noise(brute_force):
    _, parts, _, brute, brute_se = brute_force
    point = parts.between / BRUTE_B + parts.mc / (BRUTE_B * BRUTE_K)
    point_se = parts.between_se / BRUTE_B + parts.mc_se / (BRUTE_B * BRUTE_K)  # at most, whatever the correlation
    assert abs(point - brute) <= 3 * math.hypot(point_se, brute_se)
    assert abs(point - brute) <= 0.25 * brute


def test_R_bounds_the_brute_force_minibatch_gradients(brute_force):
    """Fresh noise and examples drawn anew: not guaranteed (R is the largest seen), but a mean of 8 stays well
    within the largest single-example coordinate."""
    noise, _, minibatches, _, _ = brute_force
    bound = noise.R
    assert minibatches.abs().max().item() <= bound

"""Constants of the convergence bounds: smoothness L by Hessian-vector power iteration, the gradient-noise
split sigma_x^2 / sigma_eps^2 and the coordinate-wise bound R, checked against dense Hessians, plain
autograd loops and synthetic estimators with known variances."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import make_linear_vae
from torch import nn
from torch.func import functional_call, grad, hessian, jvp

from vaeconverge.config import RunConfig
from vaeconverge.diagnostics import constants
from vaeconverge.diagnostics.constants import (
    GradientNoise,
    decompose_variance,
    gradient_noise,
    hvp_power_iteration,
    per_example_gradients,
    smoothness,
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


def dense_hessian_eigvals(model, objective, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the dense Hessian of the batch loss over the flattened trainable parameters."""
    wrapper = _BatchLoss(model, objective)
    names = [name for name, p in wrapper.named_parameters() if p.requires_grad]
    values = [p.detach() for p in wrapper.parameters() if p.requires_grad]
    frozen = {name: b for name, b in wrapper.named_buffers()}
    frozen.update({name: p.detach() for name, p in wrapper.named_parameters() if not p.requires_grad})

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split([v.numel() for v in values])
        params = {n: piece.view_as(v) for n, piece, v in zip(names, pieces, values, strict=True)}
        return functional_call(wrapper, (params, frozen), (x, eps))

    flat = torch.cat([v.reshape(-1) for v in values])
    return torch.linalg.eigvalsh(hessian(flat_loss)(flat))


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


# ---------------------------------------------------------------- power iteration


SPLIT_SHAPES = [(3,), (2, 4), (5,), (1, 1, 2)]  # 18 coordinates in four tensors of different shapes


@pytest.mark.parametrize("top", [7.0, -7.0])
def test_power_iteration_recovers_top_abs_eigenvalue_of_quadratic(top, monkeypatch):
    no_reverse_over_reverse(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    dim = sum(math.prod(s) for s in SPLIT_SHAPES)
    # |lambda_2 / lambda_1| = 4 / 7 with the opposite sign, so a sign error or a signed maximum would show.
    spectrum = torch.cat([torch.tensor([top, -math.copysign(4.0, top)]), torch.linspace(-3.0, 3.0, dim - 2)])
    spectrum = spectrum.to(F64)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    a = q @ torch.diag(spectrum) @ q.T
    a = 0.5 * (a + a.T)
    params = {f"p{i}": torch.randn(shape, generator=gen, dtype=F64) for i, shape in enumerate(SPLIT_SHAPES)}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([t.reshape(-1) for t in p.values()])
        return 0.5 * flat @ a @ flat

    value = hvp_power_iteration(loss, params, iters=500, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(abs(top), rel=1e-6)


def test_power_iteration_falls_back_to_reverse_mode_without_forward_derivative():
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

    params = {"a": torch.tensor([1.0, -2.5, 0.5], dtype=F64)}

    def loss(p):
        return Cube.apply(p["a"]).sum()

    with pytest.raises((NotImplementedError, RuntimeError)):
        jvp(grad(loss), (params,), ({"a": torch.ones(3, dtype=F64)},))
    value = hvp_power_iteration(loss, params, iters=200, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(15.0, rel=1e-8)  # Hessian diag(6 a): top |eigenvalue| 6 x 2.5


# ---------------------------------------------------------------- smoothness


@pytest.mark.parametrize("objective", [ELBO(samples=2), IWAE(samples=3)], ids=["elbo", "iwae"])
def test_smoothness_matches_dense_hessian_on_linear_vae(objective, monkeypatch):
    no_reverse_over_reverse(monkeypatch)
    model = make_linear_vae(data_dim=3, latent_dim=2, seed=1)
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    before = [p.detach().clone() for p in model.parameters()]

    value = smoothness(model, objective, x, torch.Generator().manual_seed(5))
    # smoothness's documented draws with n <= max_examples: no subset, then the noise
    eps = draw_noise(objective.samples, len(x), model.latent_dim, torch.Generator().manual_seed(5), F64)
    exact = dense_hessian_eigvals(model, objective, x, eps).abs().max().item()

    assert value == pytest.approx(exact, rel=1e-4)
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
    eps = draw_noise(1, 10, model.latent_dim, gen, F64)
    exact = dense_hessian_eigvals(model, objective, subset, eps).abs().max().item()
    full = dense_hessian_eigvals(model, objective, x, draw_noise(1, 40, 2, gen, F64)).abs().max().item()

    assert value == pytest.approx(exact, rel=1e-4)
    assert abs(full - exact) > 1e-3 * exact  # the subset matters, so the comparison above is informative


@pytest.mark.parametrize("activation", ["relu", "softclip"])
def test_smoothness_on_mlp_vae_matches_dense_hessian(activation, monkeypatch):
    no_reverse_over_reverse(monkeypatch)  # forward-mode AD supports ReLU, soft-clipping and Bernoulli BCE
    model = tiny_mlp_vae(activation)
    x = torch.rand(20, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    model.init_from_data_(x)  # non-trivial buffers (input standardisation) must be passed along
    objective = ELBO(samples=2)

    value = smoothness(model, objective, x, torch.Generator().manual_seed(9))
    eps = draw_noise(2, len(x), model.latent_dim, torch.Generator().manual_seed(9), F64)
    magnitudes = dense_hessian_eigvals(model, objective, x, eps).abs().sort(descending=True).values
    exact, ratio = magnitudes[0].item(), (magnitudes[1] / magnitudes[0]).item()

    assert math.isfinite(value) and value > 0
    # Stopping once the Rayleigh quotient moves by < tol = 1e-5 relative leaves an error of at most about
    # tol / (1 - ratio^2) (the quotient's error contracts by ratio^2 per step); factor 2 for the
    # non-asymptotic part. The ratio guard keeps that tolerance informative (below 3e-4).
    assert ratio < 0.98
    assert value == pytest.approx(exact, rel=2e-5 / (1 - ratio**2))


# ---------------------------------------------------------------- variance decomposition


@pytest.mark.parametrize(("n", "draws"), [(4000, 2), (2000, 4)])
def test_decompose_variance_recovers_known_variances(n, draws):
    gen = torch.Generator().manual_seed(11)
    dim, s_x, s_e = 5, 1.5, 0.7
    mu = torch.randn(dim, generator=gen, dtype=F64) * 3.0
    u = torch.randn(n, 1, dim, generator=gen, dtype=F64)
    e = torch.randn(n, draws, dim, generator=gen, dtype=F64)
    between, mc = decompose_variance(mu + s_x * u + s_e * e)
    # Relative standard errors: MC is an average of n * dim * (draws - 1) chi-square degrees of freedom,
    # sqrt(2 / (n dim (draws - 1))) <= 1%; between is a variance over n examples in dim coordinates,
    # about sqrt(2 / (n dim)) (1 + s_e^2 / (draws s_x^2)) <= 1.5%. 5% is over 3 standard errors for both.
    assert mc == pytest.approx(dim * s_e**2, rel=0.05)
    assert between == pytest.approx(dim * s_x**2, rel=0.05)


def test_decompose_variance_without_between_example_spread_is_near_zero_and_clamped():
    gen = torch.Generator().manual_seed(12)
    grads = 2.0 + torch.randn(3000, 2, 5, generator=gen, dtype=F64)  # only Monte Carlo noise, variance 1 each
    between, mc = decompose_variance(grads)
    assert 0.0 <= between < 0.05 * mc
    assert mc == pytest.approx(5.0, rel=0.05)


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
    noise = gradient_noise(model, ELBO(samples=1), x, 8, torch.Generator().manual_seed(16))
    assert noise.sigma2_x > 0 and noise.sigma2_eps > 0 and noise.R > 0
    for b in (1, 2, 8, 32):
        for k in (1, 2, 8):
            assert noise.at(2 * b, k) < noise.at(b, k)
            assert noise.at(b, 2 * k) < noise.at(b, k)


def test_gradient_noise_is_defined_by_two_draws_and_minibatch_means():
    """With n <= max_examples the draws are the two noise draws, then the subsets; with batch_size >= n every
    minibatch is the whole set, so R is the sup norm of the mean first-draw gradient."""
    model = make_linear_vae(data_dim=5, latent_dim=2, seed=5)
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(17), dtype=F64)
    objective = ELBO(samples=3)
    noise = gradient_noise(model, objective, x, 1000, torch.Generator().manual_seed(18))

    grads = per_example_gradients(model, objective, x, 2, torch.Generator().manual_seed(18))
    between, mc = decompose_variance(grads)
    assert noise.sigma2_x == pytest.approx(between, rel=1e-12)
    assert noise.sigma2_eps == pytest.approx(3 * mc, rel=1e-12)
    sup_of_mean = grads[:, 0].mean(0).abs().max().item()
    bound = noise.R  # (a local name: ruff reads an upper-case attribute as a constant)
    assert bound == pytest.approx(sup_of_mean, rel=1e-12)


def test_sigma2_eps_is_per_single_sample():
    """sigma_eps^2 = K x (MC variance of the K-sample ELBO gradient) does not depend on K: the K-sample
    gradient averages K i.i.d. single-sample ones. Estimates from 256 examples scatter by ~30% (a missing or
    inverted K factor would be off by 4 or 16)."""
    model = make_linear_vae(data_dim=5, latent_dim=2, seed=1)
    x = torch.randn(256, 5, generator=torch.Generator().manual_seed(19), dtype=F64)
    one, four = (gradient_noise(model, ELBO(samples=k), x, 8, torch.Generator().manual_seed(20)) for k in (1, 4))
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
        noisy = gradient_noise(model, ELBO(samples=1), x, 8, torch.Generator().manual_seed(22))
        assert noisy.sigma2_eps > 1e-3
        model.encoder.off_diag.requires_grad_(False)

    noise = gradient_noise(model, ELBO(samples=1), x, 8, torch.Generator().manual_seed(22))
    assert noise.sigma2_eps < 1e-20
    assert noise.sigma2_x > 1.0


def test_R_weakly_decreases_with_batch_size():
    model = make_linear_vae(data_dim=5, latent_dim=2, seed=3)
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(23), dtype=F64)
    bounds = [gradient_noise(model, ELBO(samples=1), x, b, torch.Generator().manual_seed(24)).R
              for b in (1, 4, 16, 64)]
    assert all(r > 0 for r in bounds)
    assert all(later <= earlier for earlier, later in itertools.pairwise(bounds))
    assert bounds[-1] < 0.8 * bounds[0]  # averaging 64 examples shrinks the sup norm's upper quantile

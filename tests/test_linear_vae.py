"""The Linear VAE is probabilistic PCA: exact marginal, closed-form optimum, and training reaches it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_linear_vae
from scipy.stats import multivariate_normal

from vaeconverge.config import RunConfig, SyntheticConfig
from vaeconverge.data import load_dataset, make_synthetic_linear
from vaeconverge.engine import train
from vaeconverge.models import ppca_optimum


def test_exact_log_prob_is_the_multivariate_normal_density(linear_vae, small_x) -> None:
    w = linear_vae.decoder.out.weight.detach().numpy()
    b = linear_vae.decoder.out.bias.detach().numpy()
    c2 = linear_vae.likelihood.variance.item()
    expected = multivariate_normal(mean=b, cov=w @ w.T + c2 * np.eye(len(b))).logpdf(small_x.numpy())
    np.testing.assert_allclose(linear_vae.exact_log_prob(small_x).detach().numpy(), expected, rtol=1e-12)


@pytest.fixture(scope="module")
def ppca_data() -> torch.Tensor:
    return make_synthetic_linear(3000, 8, 3, noise_std=0.4, seed=11).x.double()


@pytest.mark.parametrize("fixed_var", [None, 0.5])
def test_ppca_optimum_is_a_stationary_maximum(ppca_data, fixed_var) -> None:
    solution = ppca_optimum(ppca_data, 3, noise_var=fixed_var)
    std = None if fixed_var is None else fixed_var**0.5
    model = make_linear_vae(data_dim=8, latent_dim=3, learn_variance=fixed_var is None, std=std or 1.0)
    with torch.no_grad():
        model.decoder.out.weight.copy_(solution.weight)
        model.decoder.out.bias.copy_(solution.bias)
        model.likelihood.log_std.fill_(0.5 * np.log(solution.noise_var))
    decoder_params = [model.decoder.out.weight, model.decoder.out.bias]
    if fixed_var is None:
        decoder_params.append(model.likelihood.log_std)
    log_lik = model.exact_log_prob(ppca_data).mean()
    assert log_lik.item() == pytest.approx(solution.log_likelihood, rel=1e-12)
    grads = torch.autograd.grad(log_lik, decoder_params)
    assert max(g.abs().max().item() for g in grads) < 1e-8
    # Any perturbation lowers the likelihood.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(20):
            for p in decoder_params:
                p.add_(1e-2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            assert model.exact_log_prob(ppca_data).mean().item() < solution.log_likelihood
            model.decoder.out.weight.copy_(solution.weight)
            model.decoder.out.bias.copy_(solution.bias)
            model.likelihood.log_std.fill_(0.5 * np.log(solution.noise_var))


def test_ppca_recovers_the_generating_subspace() -> None:
    truth = make_synthetic_linear(50_000, 6, 2, noise_std=0.3, seed=4)
    solution = ppca_optimum(truth.x, 2)
    assert solution.noise_var == pytest.approx(0.09, rel=0.03)
    # W is identified up to rotation: compare W W^T.
    torch.testing.assert_close(solution.weight @ solution.weight.T, truth.weight @ truth.weight.T,
                               atol=0.1, rtol=0.05)


@pytest.mark.parametrize("learn_variance", [True, False])
def test_training_reaches_the_ppca_maximum_likelihood(learn_variance) -> None:
    config = RunConfig(
        data="synthetic-linear",
        synthetic=SyntheticConfig(n_samples=2000, data_dim=10, latent_dim=3, noise_std=0.5, seed=3),
        model="linear", likelihood="gaussian", learn_variance=learn_variance, latent_dim=3,
        optimizer="adam", lr=1e-2, steps=3000, batch_size=64, eval_every=1000, seed=0,
    ).validate()
    dataset = load_dataset(config)
    result = train(config, dataset, progress=False)
    reference = ppca_optimum(dataset.x, 3, None if learn_variance else 1.0).log_likelihood
    assert result.summary["ppca_log_likelihood"] == pytest.approx(reference)
    reached = result.summary["log_likelihood"]
    assert reached <= reference + 1e-3  # the closed form is the maximum
    assert abs(reached - reference) / abs(reference) < 0.005
    # and training moved a long way to get there
    assert result.metrics[0]["log_likelihood"] < reference - 0.5

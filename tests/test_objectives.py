"""ELBO and IWAE against closed forms on the Linear VAE (float64): bounds, equality, monotonicity, unbiasedness."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_linear_vae
from torch.distributions import MultivariateNormal, kl_divergence

from vaeconverge.models import gaussian_kl
from vaeconverge.objectives import ELBO, IWAE, draw_noise


def noise(samples: int, batch: int, latent: int, seed: int) -> torch.Tensor:
    return draw_noise(samples, batch, latent, torch.Generator().manual_seed(seed), torch.float64)


def test_kl_closed_form_matches_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    logvar = torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.5
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    z = q.sample((200_000,))
    log_ratio = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
    assert ((gaussian_kl(mean, logvar) - mc).abs() < 5 * se).all()
    assert torch.allclose(gaussian_kl(mean.zero_(), logvar.zero_()), torch.zeros(3, dtype=torch.float64))


def test_shared_cholesky_posterior_kl_and_density_match_torch_distributions(linear_vae, small_x) -> None:
    q = linear_vae.encode(small_x)
    full = MultivariateNormal(q.mean, scale_tril=q.scale_tril)
    prior = MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(q.kl_to_prior(), kl_divergence(full, prior))
    eps = noise(3, len(small_x), 2, 0)
    torch.testing.assert_close(q.log_prob_of_sample(eps), full.log_prob(q.rsample(eps)))


def test_monte_carlo_elbo_estimates_the_closed_form_elbo(linear_vae, small_x) -> None:
    beta = 0.6
    values = ELBO(samples=1, beta=beta)(linear_vae, small_x, noise(40_000, len(small_x), 2, 0))
    # ELBO averages over its K samples: recover per-sample values with K = 1 batches instead.
    per_draw = torch.stack([ELBO(1, beta)(linear_vae, small_x, noise(1, len(small_x), 2, s)) for s in range(4000)])
    exact = linear_vae.exact_elbo(small_x, beta).detach()
    se = per_draw.std(0) / math.sqrt(len(per_draw))
    assert ((per_draw.mean(0) - exact).abs() < 5 * se).all()
    torch.testing.assert_close(values.detach(), exact, atol=0.05, rtol=0)


def test_elbo_is_below_log_likelihood_and_equal_at_the_exact_posterior(small_x) -> None:
    model = make_linear_vae()
    with torch.no_grad():
        # standardised encoder inputs must not change the exact posterior
        model.init_from_data_(small_x * 3 + 1)
        log_px = model.exact_log_prob(small_x)
        assert (model.exact_elbo(small_x) < log_px - 1e-6).all()
        model.set_exact_posterior_()
        torch.testing.assert_close(model.exact_elbo(small_x), log_px, atol=1e-10, rtol=0)
        # With the exact posterior every importance weight equals p(x): IWAE is log p(x) draw by draw.
        torch.testing.assert_close(IWAE(5)(model, small_x, noise(5, len(small_x), 2, 3)), log_px,
                                   atol=1e-10, rtol=0)


def test_iwae_is_nondecreasing_in_k_and_below_log_likelihood(small_x) -> None:
    model = make_linear_vae(seed=3)
    log_px = model.exact_log_prob(small_x).detach()
    reps = 3000
    means, ses = [], []
    for k in (1, 2, 5, 20, 100):
        with torch.no_grad():
            draws = torch.stack([IWAE(k)(model, small_x, noise(k, len(small_x), 2, 10_000 * k + r))
                                 for r in range(reps // (1 + k // 10))])
        means.append(draws.mean(0))
        ses.append(draws.std(0) / math.sqrt(len(draws)))
        # Upper bound: E IWAE_K <= log p(x), up to Monte Carlo error (4 standard errors).
        assert (means[-1] <= log_px + 4 * ses[-1]).all()
    for k_index in range(1, len(means)):
        tol = 4 * (ses[k_index] ** 2 + ses[k_index - 1] ** 2).sqrt()
        assert (means[k_index] >= means[k_index - 1] - tol).all()
    # And the gain is real: K = 100 is well above K = 1 and within reach of log p(x).
    assert (means[-1] - means[0] > 10 * ses[0]).all()
    assert ((log_px - means[-1]) < 0.7 * (log_px - means[0])).all()
    # IWAE with K = 1 is an unbiased estimate of the ELBO.
    exact = model.exact_elbo(small_x).detach()
    assert ((means[0] - exact).abs() < 4 * ses[0]).all()


def test_iwae_value_is_the_logsumexp_bound(linear_vae, small_x) -> None:
    eps = noise(4, len(small_x), 2, 7)
    posterior = linear_vae.encode(small_x)
    z = posterior.mean + eps @ posterior.scale_tril.T
    q = MultivariateNormal(posterior.mean, scale_tril=posterior.scale_tril)
    log_w = (linear_vae.log_likelihood(small_x, z)
             + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z))
    expected = torch.log(log_w.exp().mean(0))
    torch.testing.assert_close(IWAE(4)(linear_vae, small_x, eps), expected)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_stochastic_elbo_gradient_is_unbiased(small_x, beta) -> None:
    model = make_linear_vae(seed=5)
    params = [p for p in model.parameters() if p.requires_grad]
    exact = torch.autograd.grad(-model.exact_elbo(small_x, beta).mean(), params)
    exact = torch.cat([g.flatten() for g in exact])
    draws = []
    for seed in range(3000):
        loss = -ELBO(1, beta)(model, small_x, noise(1, len(small_x), 2, seed)).mean()
        draws.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    draws = torch.stack(draws)
    se = draws.std(0) / math.sqrt(len(draws))
    z_scores = (draws.mean(0) - exact) / se.clamp_min(1e-12)
    # Coordinates with zero variance (none are expected here) would need exact equality.
    assert z_scores.abs().max() < 5, z_scores
    assert z_scores.abs().mean() < 1.2

"""Model construction: network shapes, likelihoods against torch.distributions, clipped heads, data-driven start."""

from __future__ import annotations

import pytest
import torch

from vaeconverge.config import RunConfig
from vaeconverge.models import VAE, LinearVAE, build_vae
from vaeconverge.nn import SoftClip


def mlp_config(**overrides) -> RunConfig:
    base = {"model": "mlp", "hidden": 7, "depth": 2, "latent_dim": 3, "likelihood": "bernoulli"}
    return RunConfig(**{**base, **overrides})


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_mlp_parameter_count_follows_depth_and_width(depth) -> None:
    d, h, k = 5, 7, 3
    model = build_vae(mlp_config(depth=depth), d)
    body = lambda n_in: n_in * h + h + (depth - 1) * (h * h + h)  # noqa: E731
    expected = body(d) + 2 * (h * k + k) + body(k) + (h * d + d)
    assert sum(p.numel() for p in model.parameters()) == expected
    x = torch.rand(4, d)
    q = model.encode(x)
    assert q.mean.shape == q.logvar.shape == (4, k)
    assert model.log_likelihood(x, torch.randn(6, 4, k)).shape == (6, 4)


def test_linear_gaussian_model_is_a_linear_vae_and_others_are_not() -> None:
    assert isinstance(build_vae(RunConfig(model="linear", likelihood="gaussian"), 4), LinearVAE)
    model = build_vae(RunConfig(model="linear", likelihood="bernoulli"), 4)
    assert type(model) is VAE
    assert model.exact_log_prob(torch.rand(2, 4)) is None


def test_bernoulli_likelihood_matches_torch_distributions() -> None:
    model = build_vae(mlp_config(), 5)
    x = torch.bernoulli(torch.full((4, 5), 0.3))
    z = torch.randn(2, 4, 3)
    logits = model.decoder(z)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    torch.testing.assert_close(model.log_likelihood(x, z), expected)


@pytest.mark.parametrize("learn", [True, False])
def test_gaussian_likelihood_matches_torch_distributions(learn) -> None:
    model = build_vae(mlp_config(likelihood="gaussian", decoder_std=0.4, learn_variance=learn), 5)
    assert model.likelihood.log_std.requires_grad == learn
    x, z = torch.randn(4, 5), torch.randn(2, 4, 3)
    expected = torch.distributions.Normal(model.decoder(z), 0.4).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_likelihood(x, z), expected)


def test_softclip_networks_clip_hidden_layers_and_heads() -> None:
    model = build_vae(mlp_config(activation="softclip", likelihood="gaussian", softclip_s=5.0), 5)
    clips = [m for m in model.modules() if isinstance(m, SoftClip)]
    # 2 hidden layers in each of encoder and decoder, encoder mean and log-variance heads, decoder mean head
    assert len(clips) == 7
    assert {(c.s1, c.s2) for c in clips} == {(0.0, 50.0), (-50.0, 50.0), (-20.0, 20.0)}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e3)
        q = model.encode(torch.rand(16, 5) * 1e3)
        assert q.mean.abs().max() <= 50 and q.logvar.abs().max() <= 20
        assert model.decoder(torch.randn(16, 3) * 1e3).abs().max() <= 50
    assert not any(isinstance(m, SoftClip) for m in build_vae(mlp_config(activation="relu"), 5).modules())


def test_data_driven_start_puts_the_decoder_at_the_data_marginal() -> None:
    x = torch.rand(200, 5) * 0.5 + 0.2
    model = build_vae(RunConfig(model="linear", likelihood="gaussian", learn_variance=True, latent_dim=2), 5)
    model.init_from_data_(x)
    torch.testing.assert_close(model.decoder(torch.zeros(1, 2)), x.mean(0, keepdim=True))
    assert model.likelihood.variance.item() == pytest.approx(x.var(0, unbiased=False).mean().item(), rel=1e-5)
    # The encoder sees standardised inputs (a reparameterisation of the same affine family).
    torch.testing.assert_close(model.encoder.input_shift, x.mean(0))

    bern = build_vae(mlp_config(), 5)
    bern.init_from_data_(x)
    torch.testing.assert_close(torch.sigmoid(bern.decoder.out.bias), x.mean(0))

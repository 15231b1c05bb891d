"""Remedies for IWAE's vanishing encoder signal: the VR-IWAE bound (Daudel et al. 2023) and the doubly-reparameterised
gradient (DReG, Tucker et al. 2019), against closed forms on the Linear VAE (float64), explicit gradient formulas,
and the configuration, CLI and run identity that carry their options."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_linear_vae
from torch.distributions import MultivariateNormal, Normal
from torch.func import functional_call, grad, vmap

from vaeconverge.cli import main
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.engine.ensemble import LoopedEnsemble, VectorisedEnsemble
from vaeconverge.models import VAE, build_vae
from vaeconverge.models.vae import DiagonalGaussian, standard_normal_log_prob
from vaeconverge.objectives import IWAE, VRIWAE, ObjectiveModule, make_objective, objective_spec
from vaeconverge.sweeps import run_id
from vaeconverge.sweeps.identity import identity

ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.99)


def noise(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def mlp_vae() -> VAE:
    """A small Bernoulli MLP VAE in float64: its posterior is a diagonal Gaussian, unlike the Linear VAE's."""
    torch.manual_seed(0)
    return build_vae(RunConfig(hidden=8, depth=1, latent_dim=3), 5).double()


def case(kind: str, batch: int = 4) -> tuple[VAE, torch.Tensor]:
    """A model with random (non-optimal) weights and a batch it scores: ``linear`` or ``mlp``."""
    if kind == "linear":
        return make_linear_vae(), noise(batch, 5, seed=1)
    return mlp_vae(), torch.rand(batch, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def encoder_and_decoder(model: VAE) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """phi (the encoder's parameters) and theta (the decoder's and the likelihood's)."""
    return list(model.encoder.parameters()), [*model.decoder.parameters(), *model.likelihood.parameters()]


def per_draw_gradients(model: VAE, objective, face: str, x: torch.Tensor, eps: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
    """Gradient of the summed ``face`` for each draw eps[d] (eps: draws, K, B, latent), by parameter name."""
    module = ObjectiveModule(model, objective, face)
    params = {f"model.{name}": p.detach() for name, p in model.named_parameters()}

    def summed(p: dict[str, torch.Tensor], draw: torch.Tensor) -> torch.Tensor:
        return functional_call(module, p, (x, draw)).sum()

    return vmap(grad(summed), in_dims=(None, 0))(params, eps)


def near_exact_posterior(scale: float) -> VAE:
    """A Linear VAE whose encoder is the exact posterior perturbed by ``scale`` N(0, 1) per weight: what a trained
    encoder looks like, where the normalised weights are close to uniform."""
    model = make_linear_vae()
    model.set_exact_posterior_()
    with torch.no_grad():
        for param in model.encoder.parameters():
            param.add_(scale * noise(*param.shape, seed=5))
    return model


def renyi_gap(model: VAE, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """D_alpha(q(. | x) || p(z | x)) for a Linear VAE, in closed form (Gaussians): VR-IWAE's K -> infinity limit is
    log p(x) minus it (Renyi's variational bound; 0 at alpha = 0, where the limit is log p(x))."""
    with torch.no_grad():
        weight, bias, noise_var = model.decoder.out.weight, model.decoder.out.bias, model.likelihood.variance
        precision = weight.T @ weight + noise_var * torch.eye(weight.shape[1], dtype=weight.dtype)
        post_cov = noise_var * torch.linalg.inv(precision)
        post_mean = (x - bias) @ torch.linalg.solve(precision, weight.T).T
        q = model.encode(x)
        q_cov = q.scale_tril @ q.scale_tril.T
        mixed = alpha * post_cov + (1 - alpha) * q_cov
        diff = post_mean - q.mean
        quadratic = (diff * torch.linalg.solve(mixed, diff.T).T).sum(-1)
        log_dets = torch.logdet(mixed) - (1 - alpha) * torch.logdet(q_cov) - alpha * torch.logdet(post_cov)
        return 0.5 * alpha * quadratic + log_dets / (2 * (1 - alpha))


# ------------------------------------------------------------------------------------------------------ VR-IWAE


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_vr_iwae_at_alpha_zero_is_iwae_bit_for_bit(kind):
    model, x = case(kind)
    eps = noise(6, len(x), model.latent_dim, seed=2)
    vr, iwae = VRIWAE(samples=6, alpha=0.0), IWAE(6)
    torch.testing.assert_close(vr(model, x, eps), iwae(model, x, eps), rtol=0, atol=0)
    params = list(model.parameters())
    vr_grads = torch.autograd.grad(vr.surrogate(model, x, eps).sum(), params)
    for got, want in zip(vr_grads, torch.autograd.grad(iwae.surrogate(model, x, eps).sum(), params), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_vr_iwae_falls_with_alpha_draw_by_draw_and_stays_above_the_sample_elbo(kind):
    """For one draw the bound is the log of a power mean of the weights of order 1 - alpha: non-increasing in alpha,
    and above the mean of the log weights (the K-sample ELBO estimate), by Jensen."""
    model, x = case(kind)
    eps = noise(30, 8, len(x), model.latent_dim, seed=3)  # 30 draws of K = 8
    with torch.no_grad():
        values = torch.stack([VRIWAE(samples=8, alpha=alpha)(model, x, eps) for alpha in ALPHAS])
        q = model.encode(x)
        z = q.rsample(eps)
        sample_elbo = (model.log_likelihood(x, z) + standard_normal_log_prob(z) - q.log_prob_of_sample(eps)).mean(-2)
    assert (values.diff(dim=0) <= 1e-12).all()
    assert (values[-1] >= sample_elbo - 1e-12).all()
    assert (values[0] - values[-1]).mean() > 0.05  # and alpha matters


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9])
def test_vr_iwae_lies_between_the_exact_elbo_and_log_likelihood(linear_vae, small_x, alpha):
    eps = noise(2000, 10, len(small_x), 2, seed=4)
    with torch.no_grad():
        draws = VRIWAE(samples=10, alpha=alpha)(linear_vae, small_x, eps)
        log_px, elbo = linear_vae.exact_log_prob(small_x), linear_vae.exact_elbo(small_x)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert (mean >= elbo - 4 * se).all() and (mean <= log_px + 4 * se).all()
    over_examples = draws.mean(1)  # strictly tighter than the ELBO on average over the examples
    assert over_examples.mean() - elbo.mean() > 5 * over_examples.std() / math.sqrt(len(draws))
    # and, tighter still, below Renyi's bound log p(x) - D_alpha, its limit as K grows (a mean power of w is
    # below the power of the mean, up to Monte Carlo error)
    assert (mean <= log_px - renyi_gap(linear_vae, small_x, alpha) + 4 * se).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_vr_iwae_approaches_its_limit_as_k_grows(linear_vae, small_x, alpha):
    """The limit is log p(x) - D_alpha(q || p(z | x)): log p(x) itself at alpha = 0 (IWAE), Renyi's bound above it."""
    with torch.no_grad():
        limit = linear_vae.exact_log_prob(small_x) - renyi_gap(linear_vae, small_x, alpha)
        excess, ses = [], []
        for k in (1, 10, 100, 1000):
            draws = VRIWAE(samples=k, alpha=alpha)(linear_vae, small_x, noise(100_000 // k, k, len(small_x), 2, seed=k))
            excess.append(limit - draws.mean(0))
            ses.append(draws.std(0) / math.sqrt(len(draws)))
    for before, after, se in zip(excess, excess[1:], ses[1:], strict=False):
        assert (after <= before + 4 * se).all()
    assert (excess[0] > 10 * ses[0]).all()
    assert (excess[-1].abs() <= 0.35 * excess[0] + 4 * ses[-1]).all()


# ---------------------------------------------------------------------------------------------------------- DReG


def explicit_dreg_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> list[torch.Tensor]:
    """DReG's gradients written out (encoder, then decoder parameters), with log q from torch.distributions:
    phi: sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d phi), q's parameters held fixed in log w;
    theta: sum_k w~_k grad_theta log p(x, z_k), z_k held fixed."""
    encoder, decoder = encoder_and_decoder(model)
    q = model.encode(x)
    z = q.rsample(eps)

    def log_q(at: torch.Tensor, detach: bool) -> torch.Tensor:
        mean = q.mean.detach() if detach else q.mean
        if isinstance(q, DiagonalGaussian):
            std = (0.5 * (q.logvar.detach() if detach else q.logvar)).exp()
            return Normal(mean, std).log_prob(at).sum(-1)
        return MultivariateNormal(mean, scale_tril=q.scale_tril.detach() if detach else q.scale_tril).log_prob(at)

    at = z.detach().requires_grad_()
    log_w = model.log_likelihood(x, at) + standard_normal_log_prob(at) - log_q(at, detach=True)
    weights = torch.softmax(log_w, dim=-2).detach()
    (slope,) = torch.autograd.grad(log_w.sum(), at)  # d log w_k / d z_k: w_k depends on z_k alone
    phi = torch.autograd.grad(z, encoder, grad_outputs=weights.square().unsqueeze(-1) * slope)
    theta = torch.autograd.grad((weights * model.log_likelihood(x, z.detach())).sum(), decoder)
    return [*phi, *theta]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_dreg_surrogate_has_the_iwae_value_and_the_explicit_gradients(kind):
    model, x = case(kind)
    eps = noise(5, len(x), model.latent_dim, seed=6)
    dreg = IWAE(5, estimator="dreg")
    surrogate = dreg.surrogate(model, x, eps)
    torch.testing.assert_close(surrogate, IWAE(5)(model, x, eps), rtol=0, atol=0)
    torch.testing.assert_close(dreg(model, x, eps), IWAE(5)(model, x, eps), rtol=0, atol=0)  # value untouched
    encoder, decoder = encoder_and_decoder(model)
    got = torch.autograd.grad(surrogate.sum(), [*encoder, *decoder])
    for mine, written_out in zip(got, explicit_dreg_gradients(model, x, eps), strict=True):
        torch.testing.assert_close(mine, written_out)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_dreg_decoder_gradients_are_iwae_s_draw_by_draw(kind):
    model, x = case(kind)
    decoder = encoder_and_decoder(model)[1]
    for seed in range(5):
        eps = noise(7, len(x), model.latent_dim, seed=seed)
        want = torch.autograd.grad(IWAE(7).surrogate(model, x, eps).sum(), decoder)
        got = torch.autograd.grad(IWAE(7, estimator="dreg").surrogate(model, x, eps).sum(), decoder)
        for mine, iwae in zip(got, want, strict=True):
            torch.testing.assert_close(mine, iwae, rtol=1e-12, atol=1e-12)


def test_dreg_gradient_has_iwae_s_expectation(linear_vae):
    """Paired draws (the same noise for both): the mean difference of the gradients is within Monte Carlo error."""
    x = noise(1, 5, seed=1)
    eps = noise(4000, 8, 1, 2, seed=7)
    iwae = per_draw_gradients(linear_vae, IWAE(8), "surrogate", x, eps)
    dreg = per_draw_gradients(linear_vae, IWAE(8, estimator="dreg"), "surrogate", x, eps)
    for name in iwae:
        diff = (dreg[name] - iwae[name]).reshape(len(eps), -1)
        se = diff.std(0) / math.sqrt(len(diff))
        assert (diff.mean(0).abs() <= 5 * se + 1e-12).all(), name
        if name.startswith("model.encoder"):
            assert (se > 0).all()  # the encoder's estimators do differ draw by draw


def test_dreg_encoder_gradient_has_lower_variance_at_large_k():
    """Near the exact posterior (a trained encoder) at K = 64, DReG's encoder gradient varies far less than IWAE's
    and its signal-to-noise ratio is far higher, while the decoder's gradient is the same."""
    model = near_exact_posterior(0.2)
    x = noise(1, 5, seed=1)
    eps = noise(1000, 64, 1, 2, seed=8)
    iwae = per_draw_gradients(model, IWAE(64), "surrogate", x, eps)
    dreg = per_draw_gradients(model, IWAE(64, estimator="dreg"), "surrogate", x, eps)
    encoder = [name for name in iwae if name.startswith("model.encoder")]

    def variance(grads: dict[str, torch.Tensor]) -> float:
        return sum(grads[name].reshape(len(eps), -1).var(0).sum().item() for name in encoder)

    def snr(grads: dict[str, torch.Tensor]) -> float:
        flat = torch.cat([grads[name].reshape(len(eps), -1) for name in encoder], dim=1)
        return (flat.mean(0).abs() / flat.std(0)).mean().item()

    assert variance(dreg) < variance(iwae) / 10
    assert snr(dreg) > 2 * snr(iwae)


def test_dreg_encoder_gradient_vanishes_at_the_exact_posterior(linear_vae, small_x):
    """With q the exact posterior every log weight is log p(x) whatever z: DReG's encoder gradient is zero draw by
    draw, while IWAE's keeps the score term (zero only on average)."""
    linear_vae.set_exact_posterior_()
    encoder = encoder_and_decoder(linear_vae)[0]
    eps = noise(16, len(small_x), 2, seed=9)
    dreg = torch.autograd.grad(IWAE(16, estimator="dreg").surrogate(linear_vae, small_x, eps).sum(), encoder)
    iwae = torch.autograd.grad(IWAE(16).surrogate(linear_vae, small_x, eps).sum(), encoder)
    assert max(g.abs().max().item() for g in dreg) < 1e-9
    assert max(g.abs().max().item() for g in iwae) > 1e-3


@pytest.mark.parametrize("objective", [VRIWAE(samples=3, alpha=0.5), IWAE(3, estimator="dreg")], ids=repr)
def test_stacked_replicas_agree_with_one_at_a_time(objective):
    """Replicas stacked in one set of tensors (noise T, K, B, latent) give each replica's values and gradients."""
    stacked = VectorisedEnsemble([make_linear_vae(seed=s) for s in range(3)], objective)
    looped = LoopedEnsemble([make_linear_vae(seed=s) for s in range(3)], objective)
    x, eps = noise(3, 4, 5, seed=10), noise(3, 3, 4, 2, seed=11)
    torch.testing.assert_close(stacked(x, eps), looped(x, eps))
    torch.testing.assert_close(stacked.surrogate(x, eps), looped.surrogate(x, eps))
    stacked.surrogate(x, eps).sum().backward()
    looped.surrogate(x, eps).sum().backward()
    stacked_grads, looped_grads = ([p.grad for p in e.parameters()] for e in (stacked, looped))
    # each replica's gradient, through layout-free summaries (the stacked rows are padded and laid out otherwise)
    torch.testing.assert_close(stacked.squared_norms(stacked_grads), looped.squared_norms(looped_grads))
    torch.testing.assert_close(stacked.flatten(stacked_grads).sum(1), looped.flatten(looped_grads).sum(1))


# ------------------------------------------------------------------------------- registry, configuration, CLI


def test_the_options_reach_the_objectives_and_vr_iwae_shares_iwae_s_rates():
    assert make_objective("vr-iwae", samples=3, alpha=0.25) == VRIWAE(samples=3, alpha=0.25)
    assert make_objective("iwae", samples=3, estimator="dreg") == IWAE(samples=3, estimator="dreg")
    assert make_objective("iwae", samples=3) == IWAE(samples=3)
    assert objective_spec("vr-iwae").family == "iwae"
    assert RunConfig(objective="vr-iwae", alpha=0.5).validate().assessed().objective == "iwae"


BAD = [
    ({"objective": "iwae", "alpha": 0.5}, "--alpha", "vr-iwae only"),
    ({"objective": "elbo", "alpha": 0.0}, "--alpha", "vr-iwae only"),
    ({"objective": "vr-iwae"}, "--alpha", "needs it"),
    ({"objective": "vr-iwae", "alpha": 1.0}, "--alpha", r"\[0, 1\)"),
    ({"objective": "vr-iwae", "alpha": -0.1}, "--alpha", r"\[0, 1\)"),
    ({"objective": "vr-iwae", "alpha": math.nan}, "--alpha", "finite"),
    ({"objective": "elbo", "estimator": "dreg"}, "--estimator", "iwae only"),
    ({"objective": "vr-iwae", "alpha": 0.5, "estimator": "dreg"}, "--estimator", "iwae only"),
    ({"objective": "iwae", "estimator": "score"}, "--estimator", "choose one of standard, dreg"),
]


@pytest.mark.parametrize(("options", "flag", "problem"), BAD, ids=[str(o) for o, _, _ in BAD])
def test_bad_combinations_are_config_errors(options, flag, problem):
    with pytest.raises(ConfigError, match=problem) as raised:
        RunConfig(**options).validate()
    assert raised.value.option == flag


def test_run_ids_change_only_when_a_remedy_is_asked_for():
    plain = RunConfig(objective="iwae", samples=8)
    assert {"alpha", "estimator"}.isdisjoint(identity(plain))
    ids = {run_id(plain), run_id(RunConfig(objective="iwae", samples=8, estimator="dreg")),
           run_id(RunConfig(objective="vr-iwae", samples=8, alpha=0.0)),
           run_id(RunConfig(objective="vr-iwae", samples=8, alpha=0.5))}
    assert len(ids) == 4


TRAIN = ["train", "--data", "synthetic-linear", "--n-samples", "100", "--data-dim", "4", "--true-latent-dim", "2",
         "--model", "linear", "--likelihood", "gaussian", "--latent-dim", "2", "--batch-size", "20", "--steps", "5",
         "--eval-every", "5", "--no-constants", "--quiet"]


@pytest.mark.parametrize("extra", [["--objective", "vr-iwae", "--alpha", "0.5", "--samples", "4"],
                                   ["--objective", "iwae", "--estimator", "dreg", "--samples", "4"]],
                         ids=["vr-iwae", "dreg"])
def test_the_cli_trains_with_each_remedy(tmp_path, capsys, extra):
    out = tmp_path / "run"
    assert main([*TRAIN, *extra, "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    summary = json.loads((out / "summary.json").read_text())
    config = RunConfig.from_dict(summary["config"]).validate()
    assert (config.objective, config.alpha, config.estimator) == (
        extra[1], 0.5 if "--alpha" in extra else None, "dreg" if "--estimator" in extra else "standard")
    assert math.isfinite(summary["objective"])


@pytest.mark.parametrize(("extra", "flag"), [
    (["--objective", "iwae", "--alpha", "0.5"], "--alpha"),
    (["--objective", "vr-iwae"], "--alpha"),
    (["--objective", "vr-iwae", "--alpha", "1"], "--alpha"),
    (["--objective", "elbo", "--estimator", "dreg"], "--estimator"),
    (["--objective", "iwae", "--estimator", "score"], "--estimator"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_the_cli_refuses_bad_combinations_in_one_line(tmp_path, capsys, extra, flag):
    out = tmp_path / "run"
    assert main([*TRAIN, *extra, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and flag in captured.err and "Traceback" not in captured.err
    assert not out.exists()

"""Provable floors of the objective, and delta with its provenance: the likelihoods' ceilings against brute
force, the floor below every objective at every parameter, and exact, provable and estimated deltas."""

from __future__ import annotations

import math

import pytest
import torch

from vaeconverge.config import RunConfig
from vaeconverge.data import as_float, load_dataset
from vaeconverge.engine import train
from vaeconverge.engine.recorder import START_MARGIN_SE, ObjectiveFloor, Probe, constants_from_probes
from vaeconverge.engine.train import EnsembleSubject, build_ensemble
from vaeconverge.models.vae import BernoulliLikelihood, GaussianLikelihood
from vaeconverge.objectives import draw_noise


def test_the_bernoulli_ceiling_is_the_largest_log_probability_over_the_logits() -> None:
    x = torch.tensor([[0.0, 1.0, 0.5, 0.25, 0.9]], dtype=torch.float64)
    likelihood = BernoulliLikelihood()
    ceiling = likelihood.log_prob_ceiling(x).item()
    logits = torch.linspace(-30, 30, 200001, dtype=torch.float64)
    brute = sum((v * logits - torch.nn.functional.softplus(logits)).max().item() for v in x[0])
    assert ceiling == pytest.approx(brute, abs=1e-8)
    assert ceiling == pytest.approx(-(math.log(2) + 0.5623351446188083 + 0.3250829733914482), rel=1e-12)
    assert likelihood.log_prob_ceiling(torch.tensor([[0.0, 1.0]])).item() == 0.0  # binary data: 0
    assert likelihood.log_prob_ceiling(torch.tensor([[1.5]])) is None  # outside [0, 1]: unbounded


def test_the_gaussian_ceiling_is_the_density_at_its_mode_and_absent_when_c_is_learned() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    fixed = GaussianLikelihood(std=0.3).double()
    assert torch.allclose(fixed.log_prob_ceiling(x), fixed.log_prob(x, x))
    assert GaussianLikelihood(std=0.3, learn=True).log_prob_ceiling(x) is None


@pytest.mark.parametrize("options", [
    {"likelihood": "bernoulli", "objective": "elbo", "beta": 4.0},
    {"likelihood": "bernoulli", "objective": "iwae", "samples": 5},
    {"likelihood": "gaussian", "objective": "elbo", "decoder_std": 0.5},
])
def test_the_floor_lies_below_the_objective_at_any_parameters(options) -> None:
    config = RunConfig(data="digits", model="mlp", hidden=16, latent_dim=2, seeds=(0, 1), **options)
    dataset = load_dataset(config)
    ensemble, _ = build_ensemble(config, dataset.x)
    floor = EnsembleSubject(ensemble, dataset, config).objective_floor()
    assert floor is not None and "likelihood ceiling" in floor.reference and not floor.exact
    x = as_float(dataset.x[:200])
    likelihood = ensemble.template.likelihood
    floors = -likelihood.log_prob_ceiling(x)
    assert floor.value == pytest.approx(-likelihood.log_prob_ceiling(as_float(dataset.x)).mean().item())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(3):  # the start, then moved far away: no parameters go below the floor
            eps = torch.stack([draw_noise(ensemble.objective.samples, len(x), ensemble.latent_dim, generator)
                               for _ in range(2)])
            assert (-ensemble(x, eps) >= floors - 1e-4).all()  # (T, n) per-example objectives
            for p in ensemble.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.5)


def test_a_learned_variance_has_no_floor_and_delta_says_it_is_an_estimate() -> None:
    config = RunConfig(data="synthetic-linear", model="mlp", likelihood="gaussian", learn_variance=True,
                       hidden=8, latent_dim=2, steps=30, batch_size=32, eval_points=6)
    result = train(config, load_dataset(config), progress=False)
    constants = result.summary["constants"]
    assert constants["provenance"]["delta"] == "estimate"
    assert constants["delta_reference"] == "lowest objective measured"


def test_the_linear_vae_s_delta_is_exact() -> None:
    config = RunConfig(data="synthetic-linear", model="linear", likelihood="gaussian", steps=30, batch_size=32,
                       latent_dim=2, eval_points=6)
    result = train(config, load_dataset(config), progress=False)
    constants = result.summary["constants"]
    assert constants["provenance"] == {"L": "estimate", "sigma2": "estimate", "delta": "exact", "R": "estimate"}
    assert constants["delta"] == pytest.approx(result.metrics[0]["objective"] + result.summary["ppca_log_likelihood"])


def _probe() -> Probe:
    from vaeconverge.diagnostics import GradientNoise

    return Probe(L=1.0, noise=GradientNoise(sigma2_x=1.0, sigma2_eps=1.0, R=1.0), weight_bound=1.0)


def test_delta_takes_the_highest_start_with_its_margin_against_the_floor() -> None:
    rows = [{"objective": 10.0, "objective_se": 0.5}, {"objective": 10.6, "objective_se": 0.1}]
    floor = ObjectiveFloor(2.0, "a floor")
    c = constants_from_probes([_probe()], rows, floor, lowest=5.0, d=3, batch_size=2, samples=1)
    assert c.delta == pytest.approx(max(10 + START_MARGIN_SE * 0.5, 10.6 + START_MARGIN_SE * 0.1) - 2.0)
    assert c.provenance["delta"] == "provable" and c.delta_reference == "a floor"
    exact = constants_from_probes([_probe()], [{"objective": 4.0, "objective_se": 0.0}],
                                  ObjectiveFloor(1.0, "optimum", exact=True), 3.0, 3, 2, 1)
    assert exact.delta == 3.0 and exact.provenance["delta"] == "exact"
    noisy_start = constants_from_probes([_probe()], rows[:1], ObjectiveFloor(1.0, "optimum", exact=True), 3.0, 3, 2, 1)
    assert noisy_start.provenance["delta"] == "provable"
    none = constants_from_probes([_probe()], rows, None, lowest=5.0, d=3, batch_size=2, samples=1)
    assert none.provenance["delta"] == "estimate" and none.delta == pytest.approx(10 + 1.5 - 5.0)

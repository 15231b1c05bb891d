"""The measured-run core on a subject whose answers are known: a quadratic loss with a known Hessian and
per-example gradients of known spread; then the summary's keys against a real run's summary.json."""

from __future__ import annotations

import math

import pytest
import torch

from vaeconverge.config import RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.diagnostics import L_MARGIN
from vaeconverge.engine import TrainingDiverged, train
from vaeconverge.engine.recorder import Recorder, Subject, probe_seed
from vaeconverge.theory.run import AssessedRun

EIGENVALUES = torch.tensor([3.0, -5.0, 0.5, 1.0], dtype=torch.float64)
SPREAD_X, SPREAD_EPS = 0.3, 0.7  # standard deviations of the per-example and the Monte Carlo parts


class Quadratic(Subject):
    """loss(theta) = theta^T diag(EIGENVALUES) theta / 2; example i's gradient is H theta + b_i + eps, with
    b_i ~ N(0, SPREAD_X^2 I) and eps ~ N(0, SPREAD_EPS^2 I) per draw."""

    def __init__(self, objective: float = 1.0, examples: int = 4000) -> None:
        self.seeds, self.batch_size, self.samples, self.parameters = (0,), 8, 1, len(EIGENVALUES)
        self.theta = torch.ones(len(EIGENVALUES), dtype=torch.float64)
        self.objective, self.examples = objective, examples
        self.probed_with: list[int] = []

    def measure(self) -> list[dict[str, float]]:
        squared_norm = (EIGENVALUES * self.theta).square().sum().item()  # exact: no Monte Carlo error
        return [{"objective": self.objective, "grad_sq_norm": squared_norm, "grad_sq_norm_se": 0.0,
                 "grad_sq_norm_biased": squared_norm, "log_likelihood": math.nan}]

    def fixed_noise_loss(self, t, generator, seed):
        self.probed_with.append(seed)
        return (lambda p: 0.5 * (EIGENVALUES * p["theta"].square()).sum()), {"theta": self.theta}

    def gradient_draws(self, t, generator, seed):
        n, p = self.examples, len(EIGENVALUES)
        b = SPREAD_X * torch.randn(n, 1, p, generator=generator, dtype=torch.float64)
        eps = SPREAD_EPS * torch.randn(n, 2, p, generator=generator, dtype=torch.float64)
        return EIGENVALUES * self.theta + b + eps

    def weights(self, t):
        return [self.theta]


def test_probes_measure_the_known_smoothness_and_noise() -> None:
    subject = Quadratic()
    recorder = Recorder(subject, steps=10, n_examples=100, eval_points=6)
    recorder.record(0, 0.1, 0)
    (probe,) = recorder.probes
    assert pytest.approx(5.0 * L_MARGIN, rel=1e-4) == probe.L  # the largest |eigenvalue|, of either sign
    p = len(EIGENVALUES)
    # upper confidence bounds: above the true values, by about two standard errors
    assert p * SPREAD_X**2 <= probe.noise.sigma2_x <= 1.3 * p * SPREAD_X**2
    assert p * SPREAD_EPS**2 <= probe.noise.sigma2_eps <= 1.1 * p * SPREAD_EPS**2
    assert probe.weight_bound == 1.0
    assert subject.probed_with == [probe_seed(0, 0)]


def test_probes_run_at_the_start_middle_and_end_only() -> None:
    subject = Quadratic(examples=50)
    recorder = Recorder(subject, steps=10, n_examples=100, eval_every=1)
    for step in range(11):
        recorder.record(step, 0.1, 0)
    assert subject.probed_with == [probe_seed(0, s) for s in (0, 5, 10)]
    assert [row["step"] for row in recorder.metrics] == list(range(11))
    no_constants = Recorder(Quadratic(), steps=10, n_examples=100, constants=False)
    no_constants.record(0, 0.1, 0)
    assert no_constants.probes == [] and no_constants.constants() is None


def test_a_non_finite_objective_stops_a_strict_run_and_is_only_recorded_otherwise() -> None:
    with pytest.raises(TrainingDiverged, match="seed 0 is not finite at step 0"):
        Recorder(Quadratic(objective=math.nan), steps=10, n_examples=100).record(0, 0.1, 0)
    lenient = Recorder(Quadratic(objective=math.inf), steps=10, n_examples=100, strict=False)
    with pytest.warns(UserWarning, match="not finite at step 0"):
        lenient.record(0, 0.1, 0)
    assert lenient.probes == [] and lenient.metrics[0]["objective"] == math.inf


def test_the_summary_fills_the_columns_without_touching_the_recorded_rows() -> None:
    recorder = Recorder(Quadratic(examples=50), steps=4, n_examples=100, eval_every=1)
    rows = [recorder.record(step, 0.1, 0)[0] for step in range(5)]
    run = AssessedRun(optimizer="sgd", bound_family="sgd", lr=0.1, batch_size=8)
    summary = recorder.summary(run, config={}, data={}, interrupted=False, batches_per_epoch=1)
    assert all(math.isnan(row["random_iterate"]) for row in rows)  # the rows handed out are not mutated
    assert all(math.isfinite(row["random_iterate"]) for row in recorder.metrics)
    assert summary.constants is not None and pytest.approx(5.0 * L_MARGIN, rel=1e-4) == summary.constants.L
    assert summary.to_dict()["bound"]["name"] == "ghadimi-lan"


def test_train_writes_the_recorders_summary_keys() -> None:
    """``train``'s summary.json is the recorder's typed summary, with the ensemble's own extras."""
    config = RunConfig(data="synthetic-linear", model="linear", likelihood="gaussian", steps=20, batch_size=50,
                       latent_dim=3, eval_points=6)
    result = train(config, load_dataset(config), progress=False)
    recorder = Recorder(Quadratic(), steps=4, n_examples=100)
    recorder.record(0, 0.1, 0)
    generic = recorder.summary(config.assessed(), config={}, data={}, interrupted=False, batches_per_epoch=1)
    extras = {"ppca_log_likelihood", "threads", "thread_changes", "vectorised", "device"}
    assert set(result.summary) == set(generic.to_dict()) | extras

"""ConvergenceMonitor: train's numbers from a user's loop, and no trace of itself on the training."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vaeconverge import ConfigError, ConvergenceMonitor, RunConfig
from vaeconverge.config import OPTIMIZERS
from vaeconverge.data import PermutationBatches, load_dataset
from vaeconverge.diagnostics import L_MARGIN
from vaeconverge.engine import plan as plan_module
from vaeconverge.engine import train
from vaeconverge.engine.recorder import METRIC_COLUMNS
from vaeconverge.models import build_vae
from vaeconverge.monitor import optimizer_name
from vaeconverge.objectives import build_objective, draw_noise
from vaeconverge.optim import build_optimizer, build_schedule
from vaeconverge.theory import ghadimi_lan_curve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _vae_loss(objective):
    """A user's per-example loss for a project VAE: its noise from torch's global RNG."""

    def negative_elbo(model, x):
        return -objective(model, x, draw_noise(objective.samples, len(x), model.latent_dim, dtype=x.dtype))

    return negative_elbo


def test_numbers_equal_train_on_the_same_model_data_seed_and_schedule():
    """A plain loop replaying train's batches and noise, watched by the monitor with train's checkpoints and
    diagnostics seed, gives train's metrics and random iterate (SGD, gamma_n = lr / sqrt n, past one epoch)."""
    config = RunConfig(data="digits", hidden=32, depth=1, latent_dim=4, optimizer="sgd", lr=0.05, schedule="sqrt",
                       batch_size=32, steps=60, eval_points=6, constants=False, seed=3)
    dataset = load_dataset(config)
    reference = train(config, dataset, progress=False)

    x = dataset.x
    torch.manual_seed(config.seed)  # train's initial weights
    model = build_vae(config, x.shape[1])
    model.init_from_data_(x)
    objective = build_objective(config)
    generator = torch.Generator().manual_seed(config.seed)  # train's stream of batches and noise
    batches = PermutationBatches(x, config.batch_size, generator)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr)
    schedule = build_schedule(optimizer, config.schedule, config.schedule_power, batches.batches_per_epoch)
    monitor = ConvergenceMonitor(model, _vae_loss(objective), x, config.steps, optimizer=optimizer,
                                 batch_size=config.batch_size, eval_points=config.eval_points, seed=config.seed)
    for _ in range(config.steps):
        xb = batches.next()
        eps = draw_noise(objective.samples, config.batch_size, model.latent_dim, generator, x.dtype)
        loss = -objective(model, xb, eps).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    summary = monitor.summary()

    assert [row["step"] for row in monitor.metrics] == [row["step"] for row in reference.metrics]
    for ours, theirs in zip(monitor.metrics, reference.metrics, strict=True):
        for key in ("objective", "grad_sq_norm", "batch_grad_sq_norm", "paper_proxy", "random_iterate", "lr"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, nan_ok=True), (key, ours["step"])
        assert ours["epoch"] == theirs["epoch"]
    assert math.isfinite(monitor.metrics[-1]["paper_proxy"])  # an epoch (56 batches) was completed
    for key in ("step_weighted_mean", "uniform_mean", "running_min"):
        assert summary["random_iterate"][key] == pytest.approx(reference.summary["random_iterate"][key], rel=1e-5)
    assert summary["rate_slope"] == pytest.approx(reference.summary["rate_slope"], rel=1e-4)
    assert set(reference.summary) - set(summary) == {"threads", "thread_changes", "vectorised", "device"}


class _Net(nn.Module):
    """Dropout, BatchNorm and injected Gaussian noise: every kind of state a monitor could disturb."""

    def __init__(self, batch_norm: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16) if batch_norm else nn.Identity(), nn.Tanh(),
                                  nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x + 0.1 * torch.randn_like(x))


def _noisy_cross_entropy(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _train_classifier(batch_norm: bool, monitor_options: dict | None):
    torch.manual_seed(0)
    x, y = torch.randn(96, 6), torch.randint(3, (96,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)  # shuffled by the global RNG
    model = _Net(batch_norm)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    if monitor_options is not None:
        ConvergenceMonitor(model, _noisy_cross_entropy, loader, 18, optimizer=optimizer, **monitor_options)
    for _ in range(3):
        for batch in loader:
            loss = _noisy_cross_entropy(model, batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, optimizer, torch.random.get_rng_state()


@pytest.mark.parametrize(("batch_norm", "options"), [(True, {"eval_every": 1}), (False, {"constants": True})],
                         ids=["batchnorm-every-step", "constants-probes"])
def test_training_is_bit_for_bit_unchanged_by_the_monitor(batch_norm, options):
    """Parameters, gradients, buffers, optimizer state and the global RNG after 18 steps are identical with and
    without a monitor (checkpoints at every step, or constants probes at 0, n/2 and n)."""
    plain_model, plain_optimizer, plain_rng = _train_classifier(batch_norm, None)
    model, optimizer, rng = _train_classifier(batch_norm, options)
    for (name, a), b in zip(plain_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(plain_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    plain_state, state = plain_optimizer.state_dict()["state"], optimizer.state_dict()["state"]
    for key in plain_state:
        for field in plain_state[key]:
            assert torch.equal(plain_state[key][field], state[key][field]), (key, field)
    assert torch.equal(plain_rng, rng)


def test_a_dataloader_of_x_y_tuples_and_a_plain_tensor_give_the_same_numbers():
    """Two monitors on one loop, one over the tensor (in chunks of 100) and one over an unshuffled DataLoader of
    (x, y) with batches of 100, see the same examples with the same noise: equal objectives and gradients."""
    config = RunConfig(data="digits", hidden=16, depth=1, latent_dim=3, batch_size=50, steps=30)
    x = load_dataset(config).x
    labels = torch.arange(len(x)) % 10
    torch.manual_seed(1)
    model = build_vae(config, x.shape[1])
    model.init_from_data_(x)
    loss = _vae_loss(build_objective(config))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    on_tensor = ConvergenceMonitor(model, loss, x, 30, optimizer=optimizer, batch_size=50, chunk_size=100)
    on_loader = ConvergenceMonitor(model, lambda m, batch: loss(m, batch[0]), DataLoader(TensorDataset(x, labels),
                                   batch_size=100), 30, optimizer=optimizer, batch_size=50)
    for _ in range(30):
        optimizer.zero_grad()
        loss(model, x[torch.randint(len(x), (50,))]).mean().backward()
        optimizer.step()
    assert on_tensor.n_examples == on_loader.n_examples == len(x)
    assert len(on_tensor.metrics) == len(on_loader.metrics) > 2
    for a, b in zip(on_tensor.metrics, on_loader.metrics, strict=True):
        for key in ("objective", "grad_sq_norm", "batch_grad_sq_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, nan_ok=True)
    assert on_tensor.metrics[-1]["objective"] < on_tensor.metrics[0]["objective"]


@pytest.mark.parametrize("budget", [None, 2000], ids=["one-term", "in-terms"])
def test_constants_of_least_squares_match_their_closed_forms(budget, monkeypatch):
    """Linear least squares, loss_i = (w.x_i + b - y_i)^2 / 2: L is the top eigenvalue of (1/n) sum a_i a_i^T
    (a_i = (x_i, 1)), sigma_x^2 the total variance of the per-example gradients r_i a_i, and sigma_eps^2 = 0 (no
    noise); the SGD bound is Ghadimi-Lan's with the measured step sizes. A memory budget of a few examples splits
    the Hessian's products into terms of its examples, with the same L."""
    if budget is not None:
        monkeypatch.setattr(plan_module, "DIAGNOSTICS_BYTES", budget)
    torch.manual_seed(2)
    n = 200
    x = torch.randn(n, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    y = x @ torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64) + 0.3 * torch.randn(n, dtype=torch.float64)
    model = nn.Linear(3, 1).double()

    def squared_error(m, batch):
        inputs, targets = batch
        return 0.5 * (m(inputs).squeeze(1) - targets).square()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: (k + 1) ** -0.5)
    with torch.no_grad():
        w0, b0 = model.weight.clone(), model.bias.clone()
    monitor = ConvergenceMonitor(model, squared_error, [(x, y)], 40, batch_size=8, constants=True)
    assert (monitor._subject.hvp_chunk < n) == (budget is not None)
    for _ in range(40):
        index = torch.randint(n, (8,))
        optimizer.zero_grad()
        squared_error(model, (x[index], y[index])).mean().backward()
        optimizer.step()
        monitor.step(optimizer)
        schedule.step()
    summary = monitor.summary()

    a = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    L = torch.linalg.eigvalsh(a.T @ a / n).max().item()
    residual = a @ torch.cat([w0.squeeze(0), b0]) - y  # at step 0, one of the three probes
    per_example = residual[:, None] * a
    sigma2_x0 = (per_example - per_example.mean(0)).square().sum().item() / (n - 1)
    c = summary["constants"]
    assert c["L"] == pytest.approx(L * L_MARGIN, rel=1e-4)  # the Hessian is the same at every probe
    assert c["sigma2_x"] >= sigma2_x0 * (1 - 1e-9)  # the largest over the probes
    assert c["sigma2_eps"] == 0.0
    assert c["d"] == 4 and c["batch_size"] == 8
    gammas = 0.05 * np.arange(1, 41) ** -0.5
    expected = ghadimi_lan_curve(gammas, c["L"], c["sigma2"], c["delta"])[-1]
    assert summary["bound"]["name"] == "ghadimi-lan"
    assert summary["bound"]["value"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_optimizer_is_named_from_its_class(name):
    """Every optimizer the project builds is recognised under its own --optimizer name."""
    assert optimizer_name(build_optimizer(name, [nn.Parameter(torch.zeros(2, 2))], 1e-3)) == name


def test_bad_input_is_refused_naming_the_option():
    model = nn.Linear(2, 1)
    x = torch.randn(10, 2)

    def scalar_loss(m, batch):
        return m(batch).mean()

    with pytest.raises(ConfigError, match=r"^loss_fn: must return one loss per example"):
        ConvergenceMonitor(model, scalar_loss, x, 10, batch_size=2)
    with pytest.raises(ConfigError, match=r"^batch_size:"):
        ConvergenceMonitor(model, lambda m, b: m(b).squeeze(1), x, 10)
    with pytest.raises(ConfigError, match=r"^data: must be re-iterable"):
        ConvergenceMonitor(model, lambda m, b: m(b).squeeze(1), iter([x]), 10, batch_size=2)
    with pytest.raises(ConfigError, match=r"^steps: must be a positive integer"):
        ConvergenceMonitor(model, lambda m, b: m(b).squeeze(1), x, 0, batch_size=2)
    with pytest.raises(ConfigError, match=r"^data: holds no examples"):
        ConvergenceMonitor(model, lambda m, b: m(b).squeeze(1), x[:0], 10, batch_size=2)
    one_per_example = r"^loss_fn: must return one loss per example, a tensor of shape \(\d+,\) for"
    for wrong in (lambda m, b: m(b).squeeze(1)[:1], lambda m, b: m(b).squeeze(1).repeat(2)):  # (1,) and (2B,)
        with pytest.raises(ConfigError, match=one_per_example):
            ConvergenceMonitor(model, wrong, x, 10, batch_size=2)
    with pytest.raises(ConfigError, match=r"^objective_floor: must be a finite number"):
        ConvergenceMonitor(model, lambda m, b: m(b).squeeze(1), x, 10, batch_size=2, objective_floor=math.nan)
    monitor = ConvergenceMonitor(model, lambda m, b: m(b).squeeze(1), x, 10, batch_size=2)
    with pytest.raises(ConfigError, match=r"^optimizer:"):
        monitor.step()
    batch_norm = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(ConfigError, match=r"^constants: .* pass constants=False"):
        ConvergenceMonitor(batch_norm, lambda m, b: m(b).squeeze(1), x, 10, batch_size=2, constants=True)


def _squared_error_run(model: nn.Module, **options) -> dict:
    torch.manual_seed(3)
    x, y = torch.randn(64, 3), torch.randn(64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = ConvergenceMonitor(model, lambda m, b: 0.5 * (m(b[0]).squeeze(1) - b[1]).square(), [(x, y)], 20,
                                 optimizer=optimizer, batch_size=8, constants=True, **options)
    for _ in range(20):
        index = torch.randint(64, (8,))
        optimizer.zero_grad()
        (0.5 * (model(x[index]).squeeze(1) - y[index]).square()).mean().backward()
        optimizer.step()
    return monitor.summary()


def test_a_floor_makes_delta_provable_and_a_relu_module_makes_the_bound_inapplicable():
    plain = _squared_error_run(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))
    assert plain["constants"]["provenance"]["delta"] == "estimate"
    floored = _squared_error_run(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)), objective_floor=0.0)
    c = floored["constants"]
    assert c["provenance"]["delta"] == "provable" and "objective_floor=0" in c["delta_reference"]
    assert c["delta"] >= plain["constants"]["delta"]  # the floor lies below every objective the run reached
    assert floored["bound"]["status"] == "applicable"
    kinked = _squared_error_run(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    assert kinked["bound"]["status"] == "not-applicable" and "ReLU" in kinked["bound"]["reason"]
    assert kinked["bound"]["holds"] is None


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["conv_vae", "classifier"])
def test_examples_train_and_write_train_s_outputs(name, tmp_path):
    """The README's examples, shortened: the objective falls, and the run directory holds train's files with
    train's metrics columns and a summary whose headline equals the last metrics row."""
    summary = _load_example(name).main(steps=60, out=tmp_path, constants=False)
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == METRIC_COLUMNS
    assert float(rows[-1]["objective"]) < float(rows[0]["objective"])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["grad_sq_norm"] == pytest.approx(float(rows[-1]["grad_sq_norm"]))
    assert written["steps"] == summary["steps"] == 60
    assert (tmp_path / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_events_hold_the_checkpoints(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = nn.Linear(2, 1)
    x = torch.randn(40, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = ConvergenceMonitor(model, lambda m, b: m(b).square().squeeze(1), x, 20, optimizer=optimizer,
                                 batch_size=4, eval_every=5)
    for _ in range(20):
        optimizer.zero_grad()
        model(x[:4]).square().mean().backward()
        optimizer.step()
    monitor.write(tmp_path / "run", tensorboard=tmp_path / "logs")
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["seed-0"]  # one seed: no mean beside it
    events = EventAccumulator(str(tmp_path / "logs" / "seed-0"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("grad_sq_norm")}
    assert sorted(logged) == [0, 5, 10, 15, 20]
    for row in monitor.metrics:
        assert logged[row["step"]] == pytest.approx(row["grad_sq_norm"], rel=1e-6)

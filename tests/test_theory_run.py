"""A run held against the theory: random iterate, rate, the Ghadimi-Lan bound over seeds, and `vaeconverge bound`."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from vaeconverge.cli import main
from vaeconverge.config import RunConfig, SyntheticConfig
from vaeconverge.data import load_dataset
from vaeconverge.diagnostics import mean_interval, random_iterate, smoothness
from vaeconverge.diagnostics.random_iterate import checkpoint_weights, weighted_mean_curve
from vaeconverge.diagnostics.seeds import seed_mean
from vaeconverge.engine import train
from vaeconverge.models import build_vae
from vaeconverge.objectives import build_objective
from vaeconverge.report.run_folder import write_run


def test_checkpoint_weights_sum_step_sizes_over_nearest_iterates() -> None:
    # iterates 0..5; checkpoints 0, 2, 5 own {0, 1}, {2, 3}, {4, 5}
    weights = checkpoint_weights([0, 2, 5], [1.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(weights, [1.5, 0.7, 0.3])
    stats = random_iterate([0, 2, 5], [3.0, 2.0, 1.0], [1.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert stats.step_weighted_mean == pytest.approx((1.5 * 3 + 0.7 * 2 + 0.3 * 1) / 2.5)
    assert stats.uniform_mean == pytest.approx(2.0)
    assert stats.running_min == 1.0
    assert stats.draw_step in (0, 2, 5) and stats.draw_value == {0: 3.0, 2: 2.0, 5: 1.0}[stats.draw_step]


def test_weighted_mean_curve_is_the_random_iterate_mean_of_each_prefix() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 400))
        steps = np.unique(np.concatenate([[0, n], rng.integers(0, n + 1, int(rng.integers(0, 20)))]))
        gammas, values = rng.random(n + 1), rng.random(len(steps))
        expected = [random_iterate(steps[: j + 1], values[: j + 1], gammas).step_weighted_mean
                    for j in range(len(steps))]
        np.testing.assert_allclose(weighted_mean_curve(steps, values, gammas), expected)


def test_random_draws_follow_the_step_sizes() -> None:
    gammas = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # only iterates 0 and 5 carry weight
    draws = {random_iterate([0, 2, 5], [3.0, 2.0, 1.0], gammas, seed=s).draw_step for s in range(50)}
    assert draws == {0, 5}


@pytest.fixture(scope="module")
def sgd_run():
    """Linear VAE, SGD with gamma_k = C / sqrt(k), C = 0.3 / L at the start (L grows on the way), B = K = 1, 8 seeds
    trained together (replica t is the run of seed t alone)."""
    base = RunConfig(
        data="synthetic-linear", synthetic=SyntheticConfig(n_samples=500, data_dim=5, latent_dim=2, noise_std=1.0),
        model="linear", likelihood="gaussian", decoder_std=1.0, latent_dim=2, optimizer="sgd", schedule="sqrt",
        batch_size=1, steps=3000, eval_every=50,
    )
    data = load_dataset(base)
    torch.manual_seed(base.seed)
    model = build_vae(base, data.x.shape[1])
    model.init_from_data_(data.x)
    start_l = smoothness(model, build_objective(base), data.x, torch.Generator().manual_seed(0))
    config = dataclasses.replace(base, lr=0.3 / start_l)
    return train(dataclasses.replace(config, seeds=tuple(range(8))), data, progress=False)


def test_ghadimi_lan_bound_lies_above_the_measured_mean_and_the_rate_is_about_minus_half(sgd_run) -> None:
    s = sgd_run.summary
    assert sgd_run.config.lr <= 1 / s["constants"]["L"]  # C_gamma <= 1/L along the whole trajectory
    assert s["constants"]["delta_reference"] == "closed-form pPCA optimum"
    assert s["bound"]["name"] == "ghadimi-lan" and s["bound"]["holds"]
    assert s["grad_sq_norm_estimator"].startswith("exact") and s["grad_sq_norm_se"] == 0
    mean_rows = seed_mean(sgd_run.metrics)
    assert all(row["bound"] > row["grad_sq_norm"] for row in mean_rows[1:])  # every checkpoint after the start
    # The slope of the seed-mean curve (exact ||grad L||^2) over the second half, with its interval over seeds;
    # and each seed's own slope, whose mean with a t-interval tells the same.
    low, high = s["rate_ci"]
    assert low <= -0.5 <= high and -0.75 <= s["rate_slope"] <= -0.3, (s["rate_slope"], low, high)
    mean, low, high = mean_interval([entry["rate_slope"] for entry in s["per_seed"]])
    assert -0.75 <= mean <= -0.35, (mean, low, high)


def test_summary_and_bound_command_agree(sgd_run, tmp_path, capsys) -> None:
    run_dir = write_run(tmp_path / "run", sgd_run)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("constants", "rate_slope", "random_iterate", "bound"):
        assert summary[key] is not None
    assert summary["paper_shape"] is None  # the paper's shapes are for Adam and IWAE, not SGD on an ELBO
    before = (run_dir / "convergence.png").read_bytes()
    (run_dir / "convergence.png").unlink()
    assert main(["bound", "--from", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bound"]["value"] == pytest.approx(summary["bound"]["value"])
    assert report["random_iterate"] == summary["random_iterate"]
    assert (run_dir / "convergence.png").read_bytes()[:8] == before[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["bound", "--from", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "ghadimi-lan" in text and "holds" in text and "smallest at B =" in text


def test_doubling_b_predicts_and_measures_the_noise_change(sgd_run, tmp_path, capsys) -> None:
    first = write_run(tmp_path / "b1", sgd_run)
    doubled = train(dataclasses.replace(sgd_run.config, batch_size=2), sgd_run.dataset, progress=False)
    second = write_run(tmp_path / "b2", doubled)
    assert main(["bound", "--from", str(first), "--compare", str(second), "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)["comparison"]
    assert comparison["predicted_noise_ratio"] == pytest.approx(0.5, rel=1e-9)
    assert 0.3 < comparison["measured_noise_ratio"] < 0.8
    assert math.isfinite(comparison["measured_floor_ratio"])


def test_calculator_matches_the_closed_form(capsys) -> None:
    # L = 2, sigma2 = 1, delta = 3, gamma_k = 0.5 / sqrt(k), n = 3: the general bound and THEORY's closed form
    assert main(["bound", "--L", "2", "--sigma2", "1", "--delta", "3", "--lr", "0.5", "--steps", "3", "--json"]) == 0
    bound = json.loads(capsys.readouterr().out)["bound"]
    gammas = 0.5 / np.sqrt([1, 2, 3])
    expected = (2 * 3 + 2 * 1 * np.sum(gammas**2)) / np.sum(2 * gammas - 2 * gammas**2)
    assert bound["value"] == pytest.approx(expected)
    step = min(1 / 2, math.sqrt(2 * 3 / 2) / math.sqrt(1 * 3))  # Ghadimi & Lan's constant step, Cor. 2.2
    assert bound["constant_step"]["lr"] == pytest.approx(step)
    assert bound["constant_step"]["value"] == pytest.approx(2 * 2 * 3 / 3 + 2 * math.sqrt(2 * 2 * 3) / math.sqrt(3))


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--sigma2", "1", "--delta", "3", "--lr", "0.5", "--steps", "3"], "--L"),
        (["--L", "2", "--delta", "3", "--lr", "0.5", "--steps", "3"], "--sigma2"),
        (["--L", "2", "--sigma2", "1", "--delta", "3", "--lr", "0.5", "--steps", "3", "--optimizer", "adam-defossez"],
         "--R"),
        (["--L", "-2", "--sigma2", "1", "--delta", "3", "--lr", "0.5", "--steps", "3"], "L"),
        (["--from", "/nonexistent/run"], "--from"),
        (["--compare", "/nonexistent/run"], "--compare"),
    ],
)
def test_bound_errors_name_the_option(argv, flag, capsys) -> None:
    assert main(["bound", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err

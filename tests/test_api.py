"""The Python API as a user meets it, through ``import vaeconverge as vc`` alone: fit, save and load back, sample,
reconstruct and plot, with one clear error for an option or data it cannot use."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.datasets import load_digits

import vaeconverge as vc

# Small, single-threaded runs on the host (bit for bit repeatable) with two cheap checkpoints: each fit takes a
# fraction of a second.
FAST = {"hidden": 32, "depth": 1, "batch_size": 32, "threads": 1, "constants": False, "eval_points": 2,
        "progress": False, "device": "cpu"}
RUN_FILES = {"metrics.csv", "bands.csv", "summary.json", "convergence.png", "checkpoint.pt"}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """360 of the 8x8 digits as grey levels in [0, 1]: enough for a VAE to learn something in 150 steps."""
    return (load_digits().data[:360] / 16).astype(np.float32)


@pytest.fixture(scope="module")
def run(digits) -> vc.Run:
    return vc.fit(data=digits, steps=150, seeds=2, lr=1e-2, **FAST)


@pytest.fixture(scope="module")
def saved(run, tmp_path_factory):
    return run.save(tmp_path_factory.mktemp("api") / "run")


def same_rows(a: list[dict[str, float]], b: list[dict[str, float]], skip: tuple[str, ...] = ()) -> bool:
    """Equal metrics rows, NaN (not measured) equal to NaN; the columns in ``skip`` are not compared."""
    def same(x: float, y: float) -> bool:
        return x == y or (math.isnan(x) and math.isnan(y))

    return len(a) == len(b) and all(
        set(r) == set(s) and all(key in skip or same(r[key], s[key]) for key in r) for r, s in zip(a, b, strict=True))


def as_json(value: Any) -> Any:
    """``value`` as summary.json holds it: lists for tuples, None for numbers that are not finite."""
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)


def test_a_run_holds_one_model_per_seed_and_its_measurements(run):
    assert run.config.replica_seeds == (0, 1)
    assert len(run.models) == 2 and run.model is run.models[0]
    assert not same_weights(*run.models)  # two seeds, two trainings
    assert {row["seed"] for row in run.metrics} == {0, 1}
    assert run.summary["steps"] == 150 and run.summary["data"] == {"name": "array", "n": 360, "dim": 64}


def test_a_saved_run_loads_back_equal(run, saved):
    assert {path.name for path in saved.iterdir()} == RUN_FILES
    loaded = vc.load_run(saved)
    assert loaded.config == run.config
    assert same_rows(loaded.metrics, run.metrics)
    assert loaded.summary == as_json(run.summary)
    assert all(same_weights(a, b) for a, b in zip(loaded.models, run.models, strict=True))


def test_saving_again_needs_overwrite_and_a_loaded_run_saves_the_same_run(run, saved, tmp_path):
    with pytest.raises(vc.ConfigError, match=r"already holds a run.*pass overwrite=True"):
        run.save(saved)
    again = vc.load_run(saved).save(tmp_path / "again")
    assert (again / "convergence.png").read_bytes() == (saved / "convergence.png").read_bytes()
    assert vc.load_run(again).summary == as_json(run.summary)
    assert run.save(saved, overwrite=True) == saved


def test_load_model_gives_back_each_seeds_weights(run, saved):
    for seed, model in zip(run.config.replica_seeds, run.models, strict=True):
        loaded, config = vc.load_model(saved / "checkpoint.pt", seed=seed)
        assert config == run.config
        assert same_weights(loaded, model)


def test_samples_are_pixel_probabilities_repeatable_by_generator(run):
    x = run.model.sample(7, generator=torch.Generator().manual_seed(3))
    assert x.shape == (7, 64) and not x.requires_grad
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0
    assert torch.equal(x, run.model.sample(7, generator=torch.Generator().manual_seed(3)))


def test_reconstructions_beat_the_mean_image(run, digits):
    """The decoder starts at the data's mean image, so only what the encoder learned brings the error below it."""
    x = torch.from_numpy(digits)
    baseline = (x - x.mean(0)).square().mean()
    for model in run.models:
        reconstruction = model.reconstruct(x)
        assert reconstruction.shape == x.shape and not reconstruction.requires_grad
        assert (reconstruction - x).square().mean() < 0.85 * baseline


def test_plot_returns_the_convergence_figure(run):
    fig = run.plot()
    assert isinstance(fig, Figure)
    ax_grad, ax_obj = fig.axes
    assert ax_grad.get_ylabel() == "squared gradient norm"
    assert ax_obj.get_ylabel() == "negative ELBO per example"
    assert fig.get_suptitle().startswith("mlp VAE, elbo")


def test_an_array_a_tensor_and_its_file_train_identically(digits, tmp_path):
    path = tmp_path / "digits.npy"
    np.save(path, digits.astype(np.float64))  # read back as float32, as the array and the tensor are
    runs = [vc.fit(data=data, steps=5, **FAST) for data in (digits, torch.from_numpy(digits), path)]
    for other in runs[1:]:
        assert same_rows(other.metrics, runs[0].metrics, skip=("seconds",))
        assert same_weights(other.model, runs[0].model)
    assert runs[2].summary["data"]["name"] == str(path)


def test_options_override_the_config_and_seeds_may_be_a_count():
    config = vc.RunConfig(data="synthetic-linear", model="linear", likelihood="gaussian", steps=3000, seed=4)
    run = vc.fit(config, steps=5, seeds=3, latent_dim=2, synthetic={"n_samples": 200, "data_dim": 6}, **FAST)
    assert run.config.steps == 5 and run.config.replica_seeds == (4, 5, 6)
    assert run.summary["data"] == {"name": "synthetic-linear", "n": 200, "dim": 6}
    assert isinstance(run.model, vc.LinearVAE)
    assert run.model.sample(4).shape == run.model.reconstruct(torch.zeros(4, 6)).shape == (4, 6)


def test_unknown_options_are_named_before_any_training():
    with pytest.raises(vc.ConfigError, match=r"^lerning_rate, stpes: not options of a run \(did you mean steps\?\)"):
        vc.fit(data="digits", lerning_rate=0.1, stpes=3)
    with pytest.raises(vc.ConfigError, match=r"^n: not an option of the synthetic data$"):
        vc.fit(data="synthetic-linear", synthetic={"n": 3})


@pytest.mark.parametrize(("data", "options", "message"), [
    (np.zeros(10), {}, r"expected a 2-D array \(N examples x D features\), got shape \(10,\)"),
    (np.array([["a", "b"]]), {}, "expected a real numeric array, found dtype <U1"),
    (torch.zeros(3, 0), {}, r"the data are empty \(shape \(3, 0\)\)"),
    (np.full((40, 4), 2.0), {}, r"bernoulli needs data in \[0, 1\]"),
    (np.zeros((10, 4)), {"batch_size": 32}, "32 is larger than the 10 training examples"),
])
def test_data_it_cannot_use_is_one_clear_error(data, options, message):
    with pytest.raises(vc.ConfigError, match=message):
        vc.fit(data=data, **{**FAST, **options})


def test_a_config_is_not_data_and_an_array_run_needs_its_array(run, digits):
    with pytest.raises(vc.ConfigError, match="expected a RunConfig, got ndarray"):
        vc.fit(digits)
    with pytest.raises(vc.ConfigError, match="fitted on an array in memory; pass it again as data="):
        vc.fit(run.config)

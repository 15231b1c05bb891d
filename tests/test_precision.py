"""``--precision bf16``: training runs the networks' products (linear, conv) in bfloat16 under autocast, while the
weights, the objective's arithmetic after the networks and every diagnostic stay float32."""

from __future__ import annotations

import importlib
import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from vaeconverge import runtime
from vaeconverge.cli import main
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import Dataset, load_dataset
from vaeconverge.engine import train
from vaeconverge.models import build_vae
from vaeconverge.sweeps.identity import run_id
from vaeconverge.sweeps.reproduce import reproduce

pytestmark = pytest.mark.cuda  # bf16 is for GPUs: where there is one, these tests train on it (auto)
train_module = importlib.import_module("vaeconverge.engine.train")  # the module, which the package's function shadows
PRODUCTS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
MLP = {"hidden": 16, "depth": 1, "latent_dim": 2, "steps": 6, "eval_points": 3, "constants": False, "seeds": (0, 1)}
CONV = {"model": "conv32", "latent_dim": 4, "batch_size": 8, "steps": 3, "eval_points": 2, "constants": False}


def images(n: int = 24) -> Dataset:
    """Random 3x32x32 uint8 images, flat, as the conv networks take them."""
    return Dataset("images", torch.randint(0, 256, (n, 3 * 32 * 32), generator=torch.Generator().manual_seed(0),
                                           dtype=torch.uint8))


@contextmanager
def product_dtypes(monkeypatch):
    """The dtypes of every linear and conv output, as {"training": set, "elsewhere": set}: "training" while a
    training step evaluates its batch losses, "elsewhere" for the rest (checkpoints, probes)."""
    seen: dict[str, set[torch.dtype]] = {"training": set(), "elsewhere": set()}
    where = ["elsewhere"]
    original = train_module.replica_batch_losses

    def spied(*args, **kwargs):
        batch_losses = original(*args, **kwargs)

        def marked():
            where[0] = "training"
            try:
                return batch_losses()
            finally:
                where[0] = "elsewhere"

        return marked

    def hook(module, inputs, output):
        if isinstance(module, PRODUCTS):
            seen[where[0]].add(output.dtype)

    monkeypatch.setattr(train_module, "replica_batch_losses", spied)
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize(("options", "data"), [(MLP, None), (CONV, images)], ids=["mlp-stacked", "conv32-looped"])
def test_bf16_trains_the_networks_in_bfloat16_and_measures_in_float32(monkeypatch, options, data):
    config = RunConfig(**options, precision="bf16")
    dataset = data() if data else load_dataset(config, progress=False)
    with product_dtypes(monkeypatch) as seen:
        result = train(config, dataset, progress=False)
    assert seen == {"training": {torch.bfloat16}, "elsewhere": {torch.float32}}
    assert {p.dtype for p in result.ensemble.parameters()} == {torch.float32}
    assert all(math.isfinite(row["objective"]) and math.isfinite(row["grad_sq_norm"]) for row in result.metrics)
    assert result.summary["config"]["precision"] == "bf16"


def test_float32_training_never_leaves_float32(monkeypatch):
    config = RunConfig(**MLP)
    with product_dtypes(monkeypatch) as seen:
        train(config, load_dataset(config, progress=False), progress=False)
    assert seen == {"training": {torch.float32}, "elsewhere": {torch.float32}}


def test_bf16_moves_the_numbers_a_little_and_keeps_replicas_exact():
    """Autocast really changes the arithmetic (not bit for bit float32's run), by little; and replica t of a bf16
    T-seed run is still the bf16 single run with seed t."""
    config = RunConfig(**MLP, precision="bf16")
    data = load_dataset(config, progress=False)
    both = train(config, data, progress=False)
    single = train(RunConfig(**{**MLP, "seeds": (1,)}, precision="bf16"), data, progress=False)
    full = train(RunConfig(**MLP), data, progress=False)

    def objectives(result, seed):
        return [row["objective"] for row in result.metrics if row["seed"] == seed]

    assert objectives(both, 1) == objectives(single, 1)
    assert objectives(both, 0) != objectives(full, 0)
    assert objectives(both, 0) == pytest.approx(objectives(full, 0), rel=0.02)


def test_the_model_hands_back_float32_under_autocast():
    """What follows the networks (densities, KL, the objective) gets float32 inputs: bfloat16 stays inside them."""
    model = build_vae(RunConfig(hidden=16, depth=1, latent_dim=2), 8)
    x = torch.rand(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = model.encode(x)
        z = q.rsample(torch.randn(3, 5, 2))
        log_likelihood = model.log_likelihood(x, z)
        assert model.decoder(z).dtype == torch.bfloat16  # the network itself does run in bfloat16
    assert q.mean.dtype == q.logvar.dtype == log_likelihood.dtype == torch.float32


def test_precision_choices_are_checked():
    with pytest.raises(ConfigError, match="--precision: unknown value 'fp16'"):
        RunConfig(precision="fp16").validate()
    with pytest.raises(ConfigError, match="--precision: bf16 is for the networks' products; the linear model"):
        RunConfig(model="linear", likelihood="gaussian", precision="bf16").validate()
    with pytest.raises(ConfigError, match="--precision: unknown value"):
        runtime.network_precision("half", torch.device("cpu"))


def test_a_gpu_without_bfloat16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(ConfigError, match="--precision: bf16: Tesla V100 has no bfloat16 arithmetic"):
        runtime.network_precision("bf16", torch.device("cuda"))


def test_cli_refuses_bf16_for_the_linear_model_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "linear", "--likelihood", "gaussian", "--data", "synthetic", "--precision",
                 "bf16", "--steps", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaeconverge train: error: --precision: bf16 is for the networks' products")
    assert "\n" not in err and not out.exists()


def test_bf16_is_a_different_run_and_float32_keeps_its_identity():
    assert run_id(RunConfig(precision="bf16")) != run_id(RunConfig())
    assert run_id(RunConfig(precision="float32")) == run_id(RunConfig())


def test_reproduce_takes_a_precision_only_with_paper(tmp_path):
    with pytest.raises(ConfigError, match="--precision: applies only with --paper"):
        reproduce(tmp_path / "out", quick=True, data=None, jobs=1, progress=False, precision="bf16")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("supported", [False, True])
def test_bf16_on_a_cpu_without_it_says_so_before_training(tmp_path, capsys, monkeypatch, supported):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)
    assert runtime.precision_note("float32", torch.device("cpu")) is None
    assert runtime.precision_note("bf16", torch.device("cuda")) is None
    assert main(["train", "--precision", "bf16", "--device", "cpu", "--hidden", "8", "--depth", "1", "--latent-dim",
                 "2", "--steps", "3", "--no-constants", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.count("--precision bf16: this CPU has no bfloat16 arithmetic") == (0 if supported else 1)

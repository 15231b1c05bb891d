"""Registries: an entry registered at run time is a choice everywhere a built-in one is (configurations, training,
sweeps, the monitor, the CLI), and every built-in entry builds what it says and is recognised back."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_sweep
from torch import nn

from vaeconverge import ELBO, ConvergenceMonitor
from vaeconverge.bbvi import BBVIConfig
from vaeconverge.bbvi import objectives as bbvi_objectives
from vaeconverge.cli import main
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.engine import train
from vaeconverge.models import build_vae
from vaeconverge.nn import (
    ACTIVATIONS,
    MODELS,
    ActivationSpec,
    ModelSpec,
    SoftClip,
    activation_spec,
    build_body,
    model_spec,
    register_activation,
    register_model,
)
from vaeconverge.nn.layers import Linear
from vaeconverge.objectives import OBJECTIVES, ObjectiveSpec, make_objective, objective_spec, register_objective
from vaeconverge.optim import (
    OPTIMIZERS,
    OptimizerSpec,
    build_optimizer,
    optimizer_spec,
    recognise_optimizer,
    register_optimizer,
)
from vaeconverge.sweeps import InProcess, Store, parse_spec, run_sweep

TINY = {"data": "digits", "hidden": 8, "depth": 1, "latent_dim": 2, "batch_size": 16, "steps": 6, "eval_every": 3,
        "constants": False}
SWEEP_BASE = tiny_sweep(6, 3, batch_size=16, lr=0.01)


def _is_nesterov(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["nesterov"]


@pytest.fixture
def nesterov():
    """SGD with Nesterov momentum 0.9, registered for one test: it refines the built-in ``sgd`` entry."""
    spec = register_optimizer(OptimizerSpec(
        "sgd-nesterov", torch.optim.SGD,
        lambda params, lr, momentum, betas: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
        recognises=_is_nesterov))
    yield spec
    OPTIMIZERS.pop(spec.name)


def test_a_registered_optimizer_trains_several_seeds(nesterov):
    config = RunConfig(**TINY, optimizer="sgd-nesterov", lr=0.01, seeds=(0, 1)).validate()
    result = train(config, load_dataset(config), progress=False)
    assert _is_nesterov(result.optimizer)
    assert [row["step"] for row in result.metrics if row["seed"] == 1] == [0, 3, 6]


def test_a_registered_optimizer_is_a_sweep_axis(nesterov, tmp_path):
    spec = parse_spec(SWEEP_BASE + '[grid]\noptimizer = ["sgd", "sgd-nesterov"]\n')
    assert [config.optimizer for config in spec.runs()] == ["sgd", "sgd-nesterov"]
    with Store(tmp_path / "r.db") as store:
        assert run_sweep(spec, store, InProcess(), progress=False)["done"] == 2


def test_a_registered_optimizer_is_recognised_by_the_monitor(nesterov):
    model = nn.Linear(2, 1)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer("sgd-nesterov", model.parameters(), 0.05)
    assert recognise_optimizer(optimizer) == "sgd-nesterov"
    assert recognise_optimizer(torch.optim.SGD(model.parameters(), lr=0.05)) == "sgd"
    monitor = ConvergenceMonitor(model, lambda m, b: m(b).square().squeeze(1), x, 4, optimizer=optimizer,
                                 batch_size=4, eval_every=2)
    for _ in range(4):
        optimizer.zero_grad()
        model(x[:4]).square().mean().backward()
        optimizer.step()
    assert monitor.summary()["config"]["optimizer"] == "sgd-nesterov"


def test_a_registered_optimizer_is_a_cli_choice(nesterov, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--optimizer", "sgd-nesterov", "--lr", "0.01", "--hidden", "8", "--depth", "1",
                 "--latent-dim", "2", "--steps", "4", "--eval-every", "2", "--no-constants", "--quiet",
                 "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()


def test_an_unregistered_optimizer_is_refused_everywhere(capsys):
    with pytest.raises(ConfigError, match="sgd-nesterov") as info:
        RunConfig(optimizer="sgd-nesterov").validate()
    assert info.value.option == "--optimizer"
    with pytest.raises(ValueError, match="choose one of sgd, adam"):
        optimizer_spec("sgd-nesterov")
    assert main(["train", "--optimizer", "sgd-nesterov", "--steps", "1", "--quiet"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_name_is_registered_once(nesterov):
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer(nesterov)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_built_in_optimizer_builds_its_class_and_is_recognised_back(name):
    spec = optimizer_spec(name)
    optimizer = build_optimizer(name, [nn.Parameter(torch.zeros(2, 2))], 1e-3)
    assert isinstance(optimizer, spec.torch_class)
    assert recognise_optimizer(optimizer) == name


def test_bounds_and_coupling_are_those_the_theory_and_the_ensemble_use():
    bounds = {name: spec.bound for name, spec in OPTIMIZERS.items() if spec.bound is not None}
    assert bounds == {"sgd": "sgd", "adam-defossez": "adam", "adagrad": "adagrad"}
    for name, spec in OPTIMIZERS.items():
        assert spec.bound in ("sgd", "adam", "adagrad") or spec.uncovered, name
    assert [name for name, spec in OPTIMIZERS.items() if spec.couples is not None] == ["adafactor"]


def test_an_unregistered_optimizer_class_is_recognised_as_module_and_qualname():
    optimizer = torch.optim.LBFGS([nn.Parameter(torch.zeros(2))])
    assert recognise_optimizer(optimizer) == "torch.optim.lbfgs.LBFGS"


@pytest.fixture
def no_kl():
    """An ELBO without its KL term (beta fixed at 0), registered for one test."""
    spec = register_objective(ObjectiveSpec("no-kl", lambda samples, beta: ELBO(samples=samples, beta=0.0),
                                            family="elbo", uses_beta=False))
    yield spec
    OBJECTIVES.pop(spec.name)


def test_a_registered_objective_trains_and_is_a_cli_choice(no_kl, tmp_path):
    config = RunConfig(**TINY, objective="no-kl", beta=2.0).validate()
    result = train(config, load_dataset(config), progress=False)
    assert result.ensemble.objective == ELBO(samples=1, beta=0.0)
    assert main(["train", "--objective", "no-kl", "--hidden", "8", "--depth", "1", "--latent-dim", "2",
                 "--steps", "2", "--eval-every", "1", "--no-constants", "--quiet", "--out", str(tmp_path)]) == 0


def test_objective_entries_are_checked():
    with pytest.raises(ConfigError, match="no-kl"):
        RunConfig(objective="no-kl").validate()
    with pytest.raises(ValueError, match="choose one of elbo, iwae"):
        objective_spec("no-kl")
    with pytest.raises(ValueError, match="already registered"):
        register_objective(objective_spec("elbo"))
    with pytest.raises(ValueError, match="family must be one of elbo, iwae"):
        register_objective(ObjectiveSpec("vr", lambda samples, beta: ELBO(samples), family="renyi", uses_beta=False))
    assert "vr" not in OBJECTIVES


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_built_in_objective_is_built_from_values(name):
    spec = objective_spec(name)
    objective = make_objective(name, samples=3, beta=0.5, alpha=0.5 if "alpha" in spec.takes else None)
    assert objective.samples == 3 and spec.family == {"vr-iwae": "iwae"}.get(name, name)
    assert getattr(objective, "beta", None) == (0.5 if spec.uses_beta else None)


def test_a_registered_bbvi_objective_is_a_choice():
    def half_elbo(family, target, eps, index=None):
        return 0.5 * bbvi_objectives.elbo(family, target, eps, index)

    assert "elbo" in bbvi_objectives.OBJECTIVES and list(bbvi_objectives.OBJECTIVES) == ["elbo", "iwae"]
    bbvi_objectives.register_objective("half-elbo", half_elbo)
    try:
        BBVIConfig(objective="half-elbo").validate()
        assert bbvi_objectives.build_objective("half-elbo") is half_elbo
        with pytest.raises(ValueError, match="already registered"):
            bbvi_objectives.register_objective("half-elbo", half_elbo)
    finally:
        bbvi_objectives.OBJECTIVES.pop("half-elbo")
    with pytest.raises(ConfigError, match="half-elbo"):
        BBVIConfig(objective="half-elbo").validate()


def _wide_mlp_body(in_dim: int, spec):
    return build_body(in_dim, dataclasses.replace(spec, kind="mlp", hidden=2 * spec.hidden))


@pytest.fixture
def wide_tanh():
    """An MLP twice as wide as --hidden says and a smooth tanh activation, registered for one test."""
    model = register_model(ModelSpec("wide-mlp", _wide_mlp_body))
    activation = register_activation(ActivationSpec("tanh", lambda s, s1, s2: nn.Tanh(), smooth=True))
    yield model, activation
    MODELS.pop(model.name)
    ACTIVATIONS.pop(activation.name)


def test_a_registered_model_and_activation_build_train_and_are_cli_choices(wide_tanh, tmp_path):
    config = RunConfig(**TINY, model="wide-mlp", activation="tanh").validate()
    vae = build_vae(config, 64)
    assert vae.encoder.body[0].out_features == 16 and vae.decoder.body[0].out_features == 16
    assert isinstance(vae.encoder.body[1], nn.Tanh)
    assert isinstance(vae.encoder.mean[1], SoftClip)  # a smooth network soft-clips its heads
    assert config.layers == 2
    result = train(config, load_dataset(config), progress=False)
    assert result.metrics[-1]["step"] == 6
    assert main(["train", "--model", "wide-mlp", "--activation", "tanh", "--hidden", "8", "--depth", "1",
                 "--latent-dim", "2", "--steps", "2", "--eval-every", "1", "--no-constants", "--quiet",
                 "--out", str(tmp_path)]) == 0


def test_unregistered_models_and_activations_are_refused():
    for option, values in (("--model", {"model": "wide-mlp"}), ("--activation", {"activation": "tanh"})):
        with pytest.raises(ConfigError) as info:
            RunConfig(**values).validate()
        assert info.value.option == option
    with pytest.raises(ValueError, match="choose one of linear, mlp, conv32, conv64"):
        model_spec("wide-mlp")
    with pytest.raises(ValueError, match="choose one of relu, softclip"):
        activation_spec("tanh")
    with pytest.raises(ValueError, match="already registered"):
        register_model(model_spec("mlp"))
    with pytest.raises(ValueError, match="already registered"):
        register_activation(activation_spec("relu"))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_built_in_model_states_its_facts(name):
    spec = model_spec(name)
    assert spec.linear == (name == "linear")
    assert (spec.image is not None) == name.startswith("conv")
    data_dim = 64 if spec.image is None else spec.image[0] * spec.image[1] * spec.image[2]
    vae = build_vae(RunConfig(model=name, hidden=8, depth=1, latent_dim=2), data_dim)
    assert isinstance(vae.decoder.out, Linear) == (spec.image is None)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_every_built_in_activation_states_its_smoothness(name):
    spec = activation_spec(name)
    assert spec.smooth == (name == "softclip")
    assert isinstance(spec.build(5.0, 0.0, 50.0), SoftClip if spec.smooth else nn.ReLU)

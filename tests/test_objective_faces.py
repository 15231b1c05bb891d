"""An objective's two faces: training differentiates the surrogate, while reports and diagnostics measure the value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from vaeconverge.config import RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.engine import train
from vaeconverge.engine.ensemble import LoopedEnsemble, VectorisedEnsemble
from vaeconverge.models import build_vae
from vaeconverge.objectives import ELBO, OBJECTIVES, ObjectiveModule, ObjectiveSpec, register_objective


@dataclass(frozen=True)
class DoubledELBO(ELBO):
    """The ELBO, whose training follows twice its gradient."""

    def surrogate(self, model, x, eps):
        return 2.0 * self.value(model, x, eps)


def _models(count: int = 2):
    config = RunConfig(hidden=8, depth=1, latent_dim=3)
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(build_vae(config, 5))
    return models


def test_the_module_evaluates_the_face_it_is_given():
    model = _models(1)[0]
    x, eps = torch.rand(4, 5), torch.randn(1, 4, 3)
    value = ELBO()(model, x, eps)
    torch.testing.assert_close(ObjectiveModule(model, DoubledELBO())(x, eps), value, rtol=0, atol=0)
    torch.testing.assert_close(ObjectiveModule(model, DoubledELBO(), face="surrogate")(x, eps), 2 * value,
                               rtol=0, atol=0)
    torch.testing.assert_close(ObjectiveModule(model, ELBO(), face="surrogate")(x, eps), value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="value, surrogate"):
        ObjectiveModule(model, ELBO(), face="loss")


def _gradients(ensemble, values: torch.Tensor) -> list[torch.Tensor]:
    """The gradients of the summed ``values`` that a training step hands the optimizer."""
    ensemble.zero_grad()
    values.sum().backward()
    return [p.grad.clone() for p in ensemble.parameters()]


@pytest.mark.parametrize("layout", [VectorisedEnsemble, LoopedEnsemble])
def test_an_ensemble_measures_the_value_and_trains_on_the_surrogate(layout):
    models = _models()
    plain, doubled = layout(models, ELBO()), layout(models, DoubledELBO())
    x, eps = torch.rand(2, 4, 5), torch.randn(2, 1, 4, 3)
    torch.testing.assert_close(doubled(x, eps), plain(x, eps), rtol=0, atol=0)
    torch.testing.assert_close(doubled.surrogate(x, eps), 2 * plain(x, eps), rtol=0, atol=0)
    torch.testing.assert_close(plain.surrogate(x, eps), plain(x, eps), rtol=0, atol=0)
    value_grads = _gradients(doubled, doubled(x, eps))
    for got, want in zip(value_grads, _gradients(plain, plain(x, eps)), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the value's gradient is the ELBO's
    surrogate_grads = _gradients(doubled, doubled.surrogate(x, eps))
    for got, want in zip(surrogate_grads, value_grads, strict=True):
        torch.testing.assert_close(got, 2 * want, rtol=0, atol=0)


@pytest.fixture
def doubled_elbo():
    spec = register_objective(ObjectiveSpec("elbo-x2", lambda samples, beta: DoubledELBO(samples, beta),
                                            family="elbo", uses_beta=True))
    yield spec
    OBJECTIVES.pop(spec.name)


def test_training_follows_the_surrogate_and_reports_the_value(doubled_elbo):
    """SGD on twice the ELBO at step size lr is SGD on the ELBO at 2 lr; both report the ELBO, not its double."""
    config = RunConfig(data="digits", hidden=8, depth=1, latent_dim=2, batch_size=16, steps=20, eval_every=10,
                       optimizer="sgd", lr=0.01, constants=False).validate()
    data = load_dataset(config)
    doubled = train(dataclasses.replace(config, objective="elbo-x2"), data, progress=False).metrics
    at_twice_lr = train(dataclasses.replace(config, lr=0.02), data, progress=False).metrics
    at_lr = train(config, data, progress=False).metrics
    for key in ("objective", "grad_sq_norm"):
        assert [row[key] for row in doubled] == pytest.approx([row[key] for row in at_twice_lr], rel=1e-6)
        assert doubled[0][key] == at_lr[0][key]  # step 0: the same model, measured by its value
        assert doubled[-1][key] != pytest.approx(at_lr[-1][key], rel=1e-6)

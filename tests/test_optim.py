"""Optimizers are the stock torch.optim ones; schedules give the step sizes the theory uses."""

from __future__ import annotations

import pytest
import torch

from vaeconverge.optim import build_optimizer, build_schedule


def step_sizes(schedule: str, steps: int, power: float = 0.5, batches_per_epoch: int = 1) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer("sgd", [param], lr=0.3)
    scheduler = build_schedule(optimizer, schedule, power, batches_per_epoch)
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


def test_constant_schedule() -> None:
    assert step_sizes("constant", 5) == [0.3] * 5


@pytest.mark.parametrize("power", [0.5, 0.75])
def test_sqrt_schedule_is_lr_times_n_to_minus_alpha(power) -> None:
    used = step_sizes("sqrt", 50, power)
    expected = [0.3 * n**-power for n in range(1, 51)]
    assert used == pytest.approx(expected, rel=1e-12)


def test_epoch_sqrt_schedule_is_constant_within_an_epoch() -> None:
    used = step_sizes("epoch-sqrt", 12, 0.5, batches_per_epoch=4)
    expected = [0.3 / (epoch + 1) ** 0.5 for epoch in range(3) for _ in range(4)]
    assert used == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "cls", "extra"),
    [
        ("sgd", torch.optim.SGD, {}),
        ("adam", torch.optim.Adam, {"amsgrad": False}),
        ("amsgrad", torch.optim.Adam, {"amsgrad": True}),
        ("rmsprop", torch.optim.RMSprop, {}),
        ("adagrad", torch.optim.Adagrad, {}),
    ],
)
def test_factory_returns_the_torch_optimizer(name, cls, extra) -> None:
    optimizer = build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], lr=0.01)
    assert type(optimizer) is cls
    assert optimizer.defaults["lr"] == 0.01
    for key, value in extra.items():
        assert optimizer.defaults[key] == value


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="lbfgs"):
        build_optimizer("lbfgs", [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="cosine"):
        step_sizes("cosine", 1)

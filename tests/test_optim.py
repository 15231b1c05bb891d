"""Optimizers are torch.optim's and the recursions the theory analyses (AdamDefossez, AdagradDefossez); each is
covered by a bound or says why not; schedules give the step sizes the theory uses."""

from __future__ import annotations

import pytest
import torch

from vaeconverge.optim import (
    OPTIMIZERS,
    AdagradDefossez,
    AdamDefossez,
    bound_family,
    build_optimizer,
    build_schedule,
    optimizer_spec,
    recognise_optimizer,
    uncovered_reason,
)


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
        ("adam", torch.optim.Adam, {"amsgrad": False, "betas": (0.8, 0.99)}),
        ("adam-defossez", AdamDefossez, {"betas": (0.8, 0.99), "eps": 1e-8}),
        ("amsgrad", torch.optim.Adam, {"amsgrad": True}),
        ("rmsprop", torch.optim.RMSprop, {}),
        ("adagrad", AdagradDefossez, {"eps": 1e-8}),
        ("torch-adagrad", torch.optim.Adagrad, {"fused": True}),
    ],
)
def test_factory_returns_the_optimizer(name, cls, extra) -> None:
    optimizer = build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], lr=0.01, betas=(0.8, 0.99))
    assert type(optimizer) is cls
    assert optimizer.defaults["lr"] == 0.01
    for key, value in extra.items():
        assert optimizer.defaults[key] == value


def test_every_optimizer_is_covered_by_a_bound_or_says_why_not() -> None:
    for name, spec in OPTIMIZERS.items():
        if spec.bound is None:
            assert spec.uncovered, name
            assert uncovered_reason(name) == spec.uncovered
        else:
            assert spec.bound in ("sgd", "adam", "adagrad") and spec.uncovered is None, name
            assert uncovered_reason(name) is None
        assert bound_family(name) == spec.bound
    covered = {name: spec.bound for name, spec in OPTIMIZERS.items() if spec.bound is not None}
    assert covered == {"sgd": "sgd", "adam-defossez": "adam", "adagrad": "adagrad"}


@pytest.mark.parametrize(("name", "words"), [
    ("adam", ["1/(1 - beta1^n)", "10x at n = 1", "outside the square root", "adam-defossez"]),
    ("rmsprop", ["bias correction", "1/sqrt(1 - alpha^n)", "10x at n = 1", "3.2x at n = 10"]),
    ("amsgrad", ["running maximum"]),
    ("torch-adagrad", ["eps outside the square root"]),
    ("adamw", ["no convergence bound is implemented for AdamW"]),
])
def test_uncovered_reasons_say_why(name, words) -> None:
    reason = uncovered_reason(name)
    assert reason is not None and "\n" not in reason
    for word in words:
        assert word in reason


def test_an_unregistered_name_has_no_bound_and_a_reason() -> None:
    assert bound_family("lbfgs") is None
    assert uncovered_reason("lbfgs") == "no convergence bound is implemented for lbfgs"


def test_a_spec_is_covered_or_uncovered_not_both() -> None:
    spec = optimizer_spec("sgd")
    with pytest.raises(ValueError, match="uncovered"):
        type(spec)("sgd-2", spec.torch_class, spec.build, bound="sgd", uncovered="why not")


@pytest.mark.parametrize(("optimizer", "name"), [
    (lambda p: AdamDefossez(p), "adam-defossez"),
    (lambda p: AdagradDefossez(p), "adagrad"),
    (lambda p: torch.optim.Adagrad(p), "torch-adagrad"),
    (lambda p: torch.optim.Adam(p), "adam"),
    (lambda p: torch.optim.Adam(p, amsgrad=True), "amsgrad"),
    (lambda p: torch.optim.AdamW(p), "adamw"),
    (lambda p: torch.optim.LBFGS(p), "torch.optim.lbfgs.LBFGS"),
])
def test_recognise_optimizer(optimizer, name) -> None:
    assert recognise_optimizer(optimizer([torch.nn.Parameter(torch.zeros(2))])) == name


def test_an_unknown_optimizer_class_is_named_by_module_and_qualname() -> None:
    class Mine(torch.optim.Optimizer):  # no entry recognises it
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

    name = recognise_optimizer(Mine([torch.nn.Parameter(torch.zeros(1))]))
    assert name == f"{__name__}.test_an_unknown_optimizer_class_is_named_by_module_and_qualname.<locals>.Mine"
    assert bound_family(name) is None and uncovered_reason(name) == f"no convergence bound is implemented for {name}"


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="lbfgs"):
        build_optimizer("lbfgs", [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="cosine"):
        step_sizes("cosine", 1)

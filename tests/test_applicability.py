"""Where a bound applies and what it says: refused for a non-smooth network, an uncovered optimizer, momentum,
a step past 2/L or an adaptive method with a schedule; otherwise its value, verdict, vacuity and sensitivity,
the allocation under the run's own bound, and the calculator refusing what a run's assessment refuses."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from vaeconverge.cli import main
from vaeconverge.optim import OPTIMIZERS, bound_family, uncovered_reason
from vaeconverge.report.readings import bound_text
from vaeconverge.theory.assessment import (
    Constants,
    allocation_bound,
    assess,
    bound_curve,
    not_applicable,
    paper_shape,
    sensitivity,
)
from vaeconverge.theory.bounds import ghadimi_lan
from vaeconverge.theory.run import AssessedRun

CONSTANTS = Constants(L=2.0, sigma2_x=4.0, sigma2_eps=1.0, R=1.5, a=1.0, delta=3.0, d=10, batch_size=4, samples=1,
                      delta_reference="given")
SGD = AssessedRun(optimizer="sgd", bound_family="sgd", lr=0.1, batch_size=4)
ADAM = AssessedRun(optimizer="adam-defossez", bound_family="adam", lr=0.01, batch_size=4)


def _run(name: str, **changes) -> AssessedRun:
    return dataclasses.replace(SGD, optimizer=name, bound_family=bound_family(name),
                               uncovered=uncovered_reason(name), **changes)


def test_every_built_in_optimizer_is_covered_or_says_why_not() -> None:
    gammas = SGD.step_sizes(100, 10)
    for name in OPTIMIZERS:
        reason = not_applicable(_run(name), CONSTANTS, gammas)
        if bound_family(name) is None:
            assert reason and reason == uncovered_reason(name)
        else:
            assert reason is None, (name, reason)


@pytest.mark.parametrize(("run", "words"), [
    (dataclasses.replace(SGD, activation="relu", smooth=False), "relu"),
    (_run("rmsprop"), "bias correction"),
    (_run("adam"), "1/(1 - beta1^n)"),
    (dataclasses.replace(SGD, momentum=0.9), "momentum"),
    (dataclasses.replace(SGD, lr=1.0), "2/L"),
    (dataclasses.replace(ADAM, schedule="sqrt"), "constant base step"),
])
def test_a_bound_is_refused_where_its_theorem_does_not_hold(run, words) -> None:
    reason = not_applicable(run, CONSTANTS, run.step_sizes(100, 10))
    assert reason is not None and words in reason
    metrics = [{"step": s, "grad_sq_norm": 1.0} for s in (0, 50, 100)]
    bound = assess(run, metrics, CONSTANTS, 10).summary["bound"]
    assert bound["status"] == "not-applicable" and bound["reason"] == reason
    assert bound["value"] is None and bound["holds"] is None


def _metrics(value: float) -> list[dict[str, float]]:
    return [{"step": s, "grad_sq_norm": value} for s in (0, 10, 50, 100)]


def test_an_applicable_bound_states_value_verdict_and_vacuity() -> None:
    value = float(bound_curve(SGD, CONSTANTS, SGD.step_sizes(100, 10), [100])[0])
    low = assess(SGD, _metrics(value / 2), CONSTANTS, 10).summary["bound"]
    assert low["status"] == "applicable" and low["reason"] is None
    assert low["value"] == pytest.approx(value) and low["holds"] and not low["vacuous"]
    high = assess(SGD, _metrics(value * 2), CONSTANTS, 10).summary["bound"]
    assert high["holds"] is False and not high["vacuous"]
    tiny = assess(SGD, _metrics(value / 1000), CONSTANTS, 10).summary["bound"]
    assert tiny["holds"] and tiny["vacuous"]


def test_a_measured_mean_that_is_not_finite_neither_holds_nor_violates_the_bound() -> None:
    bound = assess(SGD, _metrics(math.nan), CONSTANTS, 10).summary["bound"]
    assert bound["status"] == "applicable" and bound["holds"] is None and bound["sensitivity"] is None
    text = bound_text(bound)
    assert "undetermined" in text and "VIOLATED" not in text and "holds" not in text


@pytest.mark.parametrize("run", [SGD, ADAM, dataclasses.replace(ADAM, optimizer="adagrad", bound_family="adagrad")])
@pytest.mark.parametrize("ratio", [0.3, 3.0])
def test_the_sensitivity_is_the_factor_at_which_the_verdict_flips(run, ratio) -> None:
    gammas = run.step_sizes(100, 10)
    measured = ratio * float(bound_curve(run, CONSTANTS, gammas, [100])[0])
    factor = sensitivity(run, CONSTANTS, gammas, 100, measured)
    assert factor is not None and factor > 1

    def holds(scale: float) -> bool:
        scaled = CONSTANTS.scaled(scale)
        return not_applicable(run, scaled, gammas) is None and measured <= bound_curve(run, scaled, gammas, [100])[0]

    toward = 1 / factor if ratio < 1 else factor  # smaller constants lower a bound that holds, larger raise one
    assert holds(1.0) == (ratio < 1)
    assert holds(toward ** 0.99) == holds(1.0) and holds(toward ** 1.01) != holds(1.0)


def test_the_allocation_is_ranked_by_the_run_s_own_bound() -> None:
    run = dataclasses.replace(SGD, schedule="sqrt")
    gammas = run.step_sizes(100, 10)
    own = allocation_bound(run, CONSTANTS, 10)(run.batch_size, run.samples, 100, CONSTANTS.sigma2)
    assert own == pytest.approx(ghadimi_lan(gammas[:-1], CONSTANTS.L, CONSTANTS.sigma2, CONSTANTS.delta))
    bound = assess(run, _metrics(0.1), CONSTANTS, 10).summary["bound"]
    best = bound["best_allocation"]
    assert best["budget"] == 400 and best["bound"] <= own * (1 + 1e-12)
    assert best["bound"] == pytest.approx(allocation_bound(run, CONSTANTS, 10)(
        best["batch_size"], best["samples"], best["steps"],
        CONSTANTS.sigma2_x / best["batch_size"] + CONSTANTS.sigma2_eps / (best["batch_size"] * best["samples"])))


def test_paper_shapes_are_fitted_only_to_their_family() -> None:
    steps, values = [1, 10, 100, 1000], [1.0, 0.5, 0.2, 0.1]
    assert paper_shape(SGD, CONSTANTS, steps, values) is None
    assert paper_shape(ADAM, CONSTANTS, steps, values)["name"] == "vae-adam"
    assert paper_shape(dataclasses.replace(SGD, objective="iwae"), CONSTANTS, steps, values)["name"] == "iwae"


def test_old_constants_read_as_estimates() -> None:
    values = CONSTANTS.to_dict()
    del values["provenance"]
    assert Constants.from_dict(values).provenance == {"L": "estimate", "sigma2": "estimate", "delta": "estimate",
                                                      "R": "estimate"}


CALCULATOR = ["bound", "--L", "2", "--sigma2", "1", "--delta", "3", "--lr", "0.1", "--steps", "100"]


@pytest.mark.parametrize(("extra", "words"), [
    (["--optimizer", "rmsprop"], "bias correction"),
    (["--optimizer", "adam", "--R", "1", "--d", "10"], "adam-defossez"),
    (["--optimizer", "adam-defossez", "--R", "1", "--d", "10", "--schedule", "sqrt"], "constant base step"),
    (["--lr", "1.5"], "2/L"),
])
def test_the_calculator_refuses_what_a_run_s_assessment_refuses(extra, words, capsys) -> None:
    assert main([*CALCULATOR, *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_the_calculator_gives_the_run_assessment_s_value(capsys) -> None:
    assert main([*CALCULATOR, "--optimizer", "adam-defossez", "--schedule", "constant", "--R", "1.5", "--d", "10",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    constants = dataclasses.replace(CONSTANTS, sigma2_x=1.0, sigma2_eps=0.0, batch_size=1)
    run = dataclasses.replace(ADAM, lr=0.1, batch_size=1)
    expected = bound_curve(run, constants, run.step_sizes(100, 1), [100])[0]
    assert report["bound"]["value"] == pytest.approx(expected) and math.isfinite(expected)
    assert np.isfinite(report["bound"]["value"])

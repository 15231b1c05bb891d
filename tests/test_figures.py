"""Figures a reader can trust at a glance: markers at checkpoints, seed-quantile bands that never reach below zero
on a log panel, bounds far above the data as notes rather than y ranges, no empty panels, one iteration axis,
legends with only what varies, and the loss named as what it is. Checked on matplotlib objects, not images."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from vaeconverge.report.figures import (
    GENERIC_OBJECTIVE,
    convergence_figure,
    gradient_panel,
    objective_label,
    plot_convergence,
    plot_run,
    quantile_errors,
    run_figure,
    significant,
    split_labels,
    vacuous,
    vacuous_note,
)
from vaeconverge.report.study import StudyRun, draw_curves, plot_curves, plot_trend
from vaeconverge.sweeps.grid import Finding

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = [0, 10, 100, 1500, 3000, 4500, 6000, 7500]  # far-apart checkpoints, as a long run records them


def default_grad(step: float, seed: int) -> float:
    """A decaying ||grad L||^2 estimate whose seed 0 is lost in noise at step 6000 and every seed at 7500."""
    if step == 7500:
        return -1e-4 * (seed + 1)
    if step == 6000 and seed == 0:
        return -5e-3
    return (1 + 0.2 * seed) / math.sqrt(1 + step)


def rows(seeds: int = 3, grad=default_grad, bound: float = math.nan, biased: bool = True) -> list[dict[str, float]]:
    """Metrics rows of ``seeds`` seeds at :data:`STEPS`, with every column a run records."""
    out = []
    for seed in range(seeds):
        for k, step in enumerate(STEPS):
            g = grad(step, seed)
            out.append({"seed": seed, "step": step, "epoch": k, "lr": 0.01, "objective": 100 / (1 + k) + seed,
                        "grad_sq_norm": g, "grad_sq_norm_se": 0.01,
                        "grad_sq_norm_biased": abs(g) + 0.05 if biased else math.nan,
                        "batch_grad_sq_norm": 2 * abs(g) + 0.1, "paper_proxy": math.nan,
                        "log_likelihood": math.nan, "kl": 1.0, "active_units": 2.0, "random_iterate": abs(g) + 0.01,
                        "bound": bound, "seconds": 0.1 * k})
    return out


def summary(values: list[float], objective: str = "elbo", holds: bool | None = True, **config) -> dict:
    """A run summary whose seeds have the given final ||grad L||^2 (the run's value is their mean)."""
    return {"config": {"objective": objective, "samples": 1, "model": "mlp", "optimizer": "adam", "batch_size": 16,
                       **config},
            "grad_sq_norm": float(np.mean(values)), "objective": 90.0,
            "bound": {"name": "theorem", "value": 1e8, "holds": holds},
            "per_seed": [{"seed": seed, "grad_sq_norm": v, "objective": 90.0 + seed} for seed, v in enumerate(values)]}


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions close, kept open for inspection (closed at the end of the test)."""
    kept: list[plt.Figure] = []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    monkeypatch.undo()
    for fig in kept:
        plt.close(fig)


def legend_texts(ax: plt.Axes) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_varying_labels_keep_only_what_varies():
    sweep = ["activation=relu, softclip_s=5", "activation=softclip, softclip_s=5", "activation=softclip, softclip_s=10"]
    assert split_labels(sweep)[0] == sweep  # both axes vary somewhere: nothing to drop
    assert split_labels(sweep[:2]) == (["activation=relu", "activation=softclip"], ["softclip_s=5"])
    assert split_labels(["hidden=[64, 32], lr=0.1", "hidden=[64, 32], lr=0.2"])[0] == ["lr=0.1", "lr=0.2"]
    assert split_labels(["base"])[0] == ["base"]
    assert split_labels(["a=1, b=2", "a=1, b=2"])[0] == ["a=1, b=2", "a=1, b=2"]  # nothing varies: kept
    assert split_labels(["x=1", "x=1, y=2"])[0] == ["x=1", "x=1, y=2"]  # no label left empty
    assert split_labels([]) == ([], [])


def test_the_loss_is_named_as_what_it_is():
    assert objective_label({"objective": "elbo", "samples": 4}) == "negative ELBO per example"
    assert objective_label({"objective": "iwae", "samples": 5}) == "negative IWAE bound per example (K=5)"
    assert objective_label({"objective": "iwae", "samples": 5}, detail=False) == "negative IWAE bound per example"
    assert objective_label({"objective": "elbo", "beta": 0.5}) == "negative β-ELBO per example (β=0.5)"
    assert objective_label({"kind": "bbvi", "objective": "elbo", "samples": 1}) == "negative ELBO (whole data)"
    assert objective_label({"kind": "bbvi", "objective": "iwae", "samples": 8}) == \
        "negative IWAE bound (whole data, K=8)"
    assert objective_label(None) == objective_label({"objective": "custom"}) == GENERIC_OBJECTIVE


def test_a_bound_far_above_the_data_is_vacuous_and_written_with_two_digits():
    assert significant(2.34e8) == "2.3e8" and significant(0.05) == "0.05" and significant(1.5e-7) == "1.5e-7"
    assert vacuous([2.3e8, math.nan], measured_max=1.5)
    assert not vacuous([120.0, 2.3e8], measured_max=1.5)  # part of it is within reach of the data
    assert not vacuous([math.nan], measured_max=1.5)
    assert vacuous_note([1e9, 2.34e8, math.nan]) == "bound 2.3e8: vacuous"


def test_quantile_error_bars_are_asymmetric_and_never_cross_zero_for_a_squared_norm():
    values = [-0.4, 0.1, 0.2, 0.3, 2.0]
    center = float(np.mean(values))
    q10, q90 = np.quantile(values, [0.1, 0.9])
    low, high = quantile_errors(values, center, nonnegative=False)
    assert (low, high) == pytest.approx((center - q10, q90 - center))
    low, high = quantile_errors(values, center, nonnegative=True)
    assert center - low == pytest.approx(0.0) and high == pytest.approx(q90 - center)
    assert quantile_errors([-1.0, -0.5, -0.2], -0.5, nonnegative=True) == (0.0, pytest.approx(0.24))
    assert quantile_errors([0.3], 0.3, nonnegative=True) == (0.0, 0.0)  # one seed: no bar


def test_a_vacuous_bound_leaves_the_y_range_to_the_data_and_becomes_a_note():
    metrics = rows(bound=1e8)
    fig, ax = plt.subplots()
    gradient_panel(ax, metrics, "bound (theorem 1)")
    top = ax.get_ylim()[1]
    assert top < 100 * max(r["grad_sq_norm_biased"] for r in metrics)
    assert [t.get_text() for t in ax.texts] == ["bound 1e8: vacuous"]
    assert not any("bound" in text for text in legend_texts(ax))
    plt.close(fig)

    fig, ax = plt.subplots()
    gradient_panel(ax, rows(bound=5.0), "bound (theorem 1)")  # near the data: drawn, in range and in the legend
    assert "bound (theorem 1)" in legend_texts(ax) and ax.get_ylim()[1] >= 5.0 and not ax.texts
    plt.close(fig)


def test_the_log_panel_marks_checkpoints_bands_at_quantiles_and_never_bridges_a_missing_point():
    fig, ax = plt.subplots()
    gradient_panel(ax, rows())
    lines = {line.get_label(): line for line in ax.get_lines()}
    mean = lines["full-objective gradient (mean of 3 seeds)"]
    assert mean.get_marker() == "o"
    for label, line in lines.items():
        if label != "running minimum":
            assert line.get_marker() not in (None, "None", "", " "), label
    y = np.asarray(mean.get_ydata(), dtype=float)
    assert np.isnan(y[-1]) and np.isfinite(y[:-1]).all()  # the mean at 7500 is <= 0: a gap, not a bridge
    marks = lines["estimate ≤ 0 (lost in Monte Carlo noise)"]
    assert list(marks.get_xdata()) == [7500]
    assert "single-replicate reading (biased)" in lines
    (band,) = ax.collections
    assert "10-90% of seeds" in legend_texts(ax)
    vertices = np.concatenate([path.vertices for path in band.get_paths()])
    assert (vertices[:, 1] > 0).all()  # seed 0 is negative at 6000: the band's lower edge is cut, not below zero
    at_100 = np.quantile([default_grad(100, s) for s in range(3)], [0.1, 0.9])
    assert set(np.round(vertices[np.isclose(vertices[:, 0], 100), 1], 12)) == set(np.round(at_100, 12))
    plt.close(fig)


def test_convergence_panels_share_a_symlog_axis_and_name_the_objective(tmp_path):
    path = tmp_path / "convergence.png"
    plot_run(rows(bound=1e8), summary([0.1, 0.2], objective="iwae", samples=5), path)
    assert path.read_bytes().startswith(PNG)
    ax_grad, ax_obj = run_figure(rows(bound=1e8), summary([0.1, 0.2], objective="iwae", samples=5)).axes
    assert ax_grad.get_xscale() == ax_obj.get_xscale() == "symlog"
    assert ax_grad.get_xlim() == ax_obj.get_xlim()
    assert ax_obj.get_ylabel() == "negative IWAE bound per example (K=5)"
    assert all(line.get_marker() == "o" for line in ax_obj.get_lines())
    plot_convergence(rows(), tmp_path / "again.png")
    plot_convergence(rows(), tmp_path / "twice.png")
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "twice.png").read_bytes()  # no version stamp


def test_a_panel_with_nothing_to_draw_is_a_sentence_not_an_empty_frame(tmp_path):
    negative = rows(grad=lambda step, seed: -1e-3 * (seed + 1))
    ax_grad = convergence_figure(negative).axes[0]  # only the biased reading and its kin can be drawn
    assert "full-objective gradient (mean of 3 seeds)" not in legend_texts(ax_grad)
    marks = [line for line in ax_grad.get_lines() if line.get_label() == "estimate ≤ 0 (lost in Monte Carlo noise)"]
    assert list(marks[0].get_xdata()) == STEPS
    for row in negative:
        row.update(grad_sq_norm_biased=math.nan, batch_grad_sq_norm=math.nan, random_iterate=math.nan)
    plot_convergence(negative, tmp_path / "negative.png")
    assert (tmp_path / "negative.png").read_bytes().startswith(PNG)
    ax_grad, ax_obj = convergence_figure(negative).axes
    assert not ax_grad.axison and ax_grad.get_legend() is None and "≤ 0" in ax_grad.texts[0].get_text()
    assert ax_obj.axison
    assert not any(ax.axison for ax in convergence_figure([]).axes)


def test_curves_name_runs_by_what_varies_and_keep_the_range_of_the_data(tmp_path, figures):
    runs = [StudyRun("activation=relu, softclip_s=5", "done", rows(bound=1e8), summary([0.1], objective="iwae",
                                                                                        samples=5)),
            StudyRun("activation=softclip, softclip_s=5", "done", rows(bound=1e8), summary([0.1], objective="iwae",
                                                                                            samples=5)),
            StudyRun("activation=tanh, softclip_s=5", "queued", [], None)]
    fig, (ax_grad, ax_obj) = plt.subplots(1, 2, sharex=True)
    draw_curves(ax_grad, ax_obj, runs)
    assert legend_texts(ax_grad)[:2] == ["activation=relu", "activation=softclip"]
    assert not any("bound" in text for text in legend_texts(ax_grad))
    assert "dashed" not in ax_grad.get_ylabel()
    assert ax_grad.get_ylim()[1] < 1e3
    assert sorted(t.get_text() for t in ax_grad.texts) == ["bound 1e8: vacuous (activation=relu)\n"
                                                           "bound 1e8: vacuous (activation=softclip)"]
    assert ax_grad.get_xscale() == ax_obj.get_xscale() == "symlog"
    assert ax_obj.get_ylabel() == "negative IWAE bound per example (K=5)"
    assert all(line.get_marker() in ("o", "v") for line in ax_grad.get_lines())
    plt.close(fig)

    path = tmp_path / "curves.png"
    plot_curves(runs, path, "activation")
    assert path.read_bytes().startswith(PNG)
    assert "softclip_s=5 in all runs" in figures[-1].texts[0].get_text()
    plot_curves([runs[2]], tmp_path / "nothing.png", "nothing yet")
    assert not any(ax.axison for ax in figures[-1].axes)
    mixed = [StudyRun("objective=elbo", "done", rows(), summary([0.1])),
             StudyRun("objective=iwae", "done", rows(), summary([0.1], objective="iwae", samples=5))]
    plot_curves(mixed, tmp_path / "mixed.png", "objective")
    assert figures[-1].axes[1].get_ylabel() == GENERIC_OBJECTIVE


def test_trend_bars_are_seed_quantiles_cut_at_zero(tmp_path, figures):
    seeds = [-0.4, 0.1, 0.2, 0.3, 2.0]
    runs = [StudyRun("batch_size=16", "done", rows(), summary(seeds)),
            StudyRun("batch_size=64", "done", rows(), summary([0.05]))]  # one seed: no bar
    path = tmp_path / "trend.png"
    plot_trend(runs, Finding("larger B ends lower", "grad_sq_norm", "decreasing", reference="1/x"), path, "B")
    assert path.read_bytes().startswith(PNG)
    (ax,) = figures[-1].axes
    point = ax.get_lines()[0]
    assert list(point.get_ydata()) == pytest.approx([np.mean(seeds), 0.05])
    (bars,) = ax.containers
    (segments,) = [c.get_segments() for c in bars.lines[2]]
    assert len(segments) == 1  # only the run of several seeds
    (x0, low), (_, high) = segments[0]
    assert x0 == 0 and low == pytest.approx(0.0) and high == pytest.approx(np.quantile(seeds, 0.9))
    assert "theory: $\\propto 1/x$" in legend_texts(ax)


def test_a_boolean_finding_is_written_under_the_runs_not_drawn_as_an_empty_panel(tmp_path, figures):
    runs = [StudyRun("optimizer=sgd", "done", rows(), summary([0.1, 0.2], holds=True)),
            StudyRun("optimizer=adam", "done", rows(), summary([0.3, 0.4], holds=False)),
            StudyRun("optimizer=rmsprop", "failed", [], None)]
    path = tmp_path / "trend.png"
    plot_trend(runs, Finding("the bound holds", "bound.holds", "all-true"), path, "the bound holds")
    assert path.read_bytes().startswith(PNG)
    (ax,) = figures[-1].axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["optimizer=sgd\nbound.holds: True", "optimizer=adam\nbound.holds: False",
                     "optimizer=rmsprop\nbound.holds: n/a"]
    plot_trend(runs[2:], None, tmp_path / "none.png", "nothing finished")
    assert not figures[-1].axes[0].axison
    plot_trend(runs, Finding("lower objective", "objective", "decreasing"), tmp_path / "two.png", "objective")
    assert figures[-1].axes[1].get_ylabel() == f"final {GENERIC_OBJECTIVE}"  # one run has no summary to tell

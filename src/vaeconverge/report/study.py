"""Figures of a sweep (a study along one or more axes), drawn from what the store holds: every run's
squared gradient norm and objective against iteration (seed means in 10-90% bands, the bound where one
applies and says something), and the studied quantity at the end of the runs against the axis, with the theory's
trend. Runs are named by what varies between them; what they share goes to the title."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ..diagnostics.seeds import by_seed, seed_mean
from ..sweeps.grid import Finding
from .figures import (
    GENERIC_OBJECTIVE,
    NOT_POSITIVE,
    PNG_METADATA,
    SEED_BAND,
    draw_bound,
    log_floor,
    mark_not_positive,
    measured_line,
    no_data,
    note,
    objective_label,
    quantile_errors,
    seed_band,
    split_labels,
    steps_axis,
    vacuous,
    vacuous_note,
)
from .findings import metric_of, per_seed

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch


@dataclass(frozen=True)
class StudyRun:
    """One run of a study as the report sees it: its label, status, metric rows and summary."""

    label: str
    status: str
    metrics: Sequence[dict[str, float]]
    summary: dict[str, Any] | None


def objective_of(runs: Sequence[StudyRun]) -> str:
    """The name of the runs' common objective (with K and beta where those agree too); generic where the runs mix
    objectives or one has no summary to tell."""
    configs = [(run.summary or {}).get("config") for run in runs]
    for detail in (True, False):
        names = {objective_label(config, detail) for config in configs}
        if len(names) == 1:
            return names.pop()
    return GENERIC_OBJECTIVE


def plot_curves(runs: Sequence[StudyRun], path: str | Path, title: str) -> None:
    """||grad L||^2 (log scale, each run's bound dashed unless vacuous) and the objective against iteration on one
    symlog axis, one colour per run (:func:`draw_curves`)."""
    fig, (ax_grad, ax_obj) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True, constrained_layout=True)
    draw_curves(ax_grad, ax_obj, runs)
    fig.suptitle(_titled(title, split_labels([run.label for run in runs if run.metrics])[1]))
    fig.savefig(path, dpi=100, format="png", metadata=PNG_METADATA)
    plt.close(fig)


def draw_curves(ax_grad: plt.Axes, ax_obj: plt.Axes, runs: Sequence[StudyRun]) -> None:
    """The panels of :func:`plot_curves` for the runs with metrics: each one's seed mean, a marker at every
    checkpoint, inside its 10-90% band; the y range of the gradient panel is the measured data's."""
    drawn = [run for run in runs if run.metrics]
    if not drawn:
        for ax in (ax_grad, ax_obj):
            no_data(ax, "no run has measurements yet")
        return
    labels = split_labels([run.label for run in drawn])[0]
    means = [seed_mean(run.metrics) for run in drawn]
    floor = log_floor([row["grad_sq_norm"] for mean in means for row in mean])
    with_objective = any(math.isfinite(row["objective"]) for mean in means for row in mean)
    if floor is None:
        no_data(ax_grad, "no positive estimate of $\\|\\nabla L\\|^2$ to draw on a log scale")
    else:
        ax_grad.set_yscale("log")
    if not with_objective:
        no_data(ax_obj, "no objective measured")
    handles: list[Any] = []
    measured, bounds, hidden_any, several_any, bound_drawn = [], [], False, False, False
    for i, (run, label, mean) in enumerate(zip(drawn, labels, means, strict=True)):
        color = f"C{i % 10}"
        steps = [row["step"] for row in mean]
        several = len(by_seed(run.metrics)) > 1
        several_any |= several
        handles.append(Line2D([], [], color=color, marker="o", ms=3.5, label=label))
        if floor is not None:
            grads = [row["grad_sq_norm"] for row in mean]
            hidden = measured_line(ax_grad, steps, grads, log=True, color=color)
            mark_not_positive(ax_grad, hidden, color)
            hidden_any |= bool(hidden)
            measured += [v for v in grads if math.isfinite(v)]
            measured += seed_band(ax_grad, run.metrics, "grad_sq_norm", color, floor) if several else []
            bounds.append((steps, [b if (b := row.get("bound", math.nan)) > 0 else math.nan for row in mean],
                           color, label))
        if with_objective:
            measured_line(ax_obj, steps, [row["objective"] for row in mean], log=False, color=color)
            if several:
                seed_band(ax_obj, run.metrics, "objective", color)
    notes = []
    for steps, bound, color, label in bounds:
        if vacuous(bound, max(measured)):
            notes.append(f"{vacuous_note(bound)} ({label})")
        elif any(math.isfinite(b) for b in bound):
            draw_bound(ax_grad, steps, bound, max(measured), color=color, ls="--", lw=1)
            bound_drawn = True
    note(ax_grad, notes)
    extras = ((bound_drawn, Line2D([], [], color="k", ls="--", lw=1, label="theoretical bound (run's colour)")),
              (several_any, Patch(color="0.5", alpha=0.3, label=SEED_BAND)),
              (hidden_any, Line2D([], [], ls="none", marker="v", mfc="none", color="k", label=NOT_POSITIVE)))
    handles += [handle for shown, handle in extras if shown]
    steps_axis((ax_grad, ax_obj), max(row["step"] for run in drawn for row in run.metrics))
    ax_grad.set_ylabel("$\\|\\nabla L(\\theta_n)\\|^2$ (seed mean)")
    ax_obj.set_ylabel(objective_of(drawn))
    for ax in (ax_grad, ax_obj):
        ax.grid(True, which="both", alpha=0.3)
    legend_ax = ax_grad if floor is not None else ax_obj if with_objective else None
    if legend_ax is not None:
        legend_ax.legend(handles=handles, fontsize=8)


def plot_trend(runs: Sequence[StudyRun], finding: Finding | None, path: str | Path, title: str) -> None:
    """The final ||grad L||^2 of each run against its axis label (:func:`trend_panel`) and, beside it, the finding's
    own metric when that is another number; a metric that is not a number (``bound.holds``) is written under
    each run's label instead of drawn."""
    ticks, shared = split_labels([run.label for run in runs])
    axis_values = [_axis_value(label) for label in ticks]
    metric = finding.metric if finding else "grad_sq_norm"
    values = [metric_of(run.summary, metric) for run in runs]
    numeric = any(math.isfinite(_number(v)) for v in values)
    if metric != "grad_sq_norm" and not numeric and any(v is not None for v in values):
        ticks = [f"{tick}\n{metric}: {'n/a' if v is None else v}" for tick, v in zip(ticks, values, strict=True)]
    metrics = ["grad_sq_norm"] + ([metric] if metric != "grad_sq_norm" and numeric else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.2), constrained_layout=True,
                             squeeze=False)
    for ax, panel in zip(axes[0], metrics, strict=True):
        reference = finding is not None and finding.metric == panel and finding.reference == "1/x"
        trend_panel(ax, runs, panel, ticks, axis_values if reference else None)
    fig.suptitle(textwrap.fill(_titled(title, shared), 90 * len(metrics)), fontsize=10)
    fig.savefig(path, dpi=100, format="png", metadata=PNG_METADATA)
    plt.close(fig)


def trend_panel(ax: plt.Axes, runs: Sequence[StudyRun], metric: str, ticks: Sequence[str],
                axis_values: Sequence[float | None] | None = None) -> None:
    """``metric`` of each run at its seed mean (the summary's value) with a bar from the 10% to the 90% quantile
    of its seeds (none for one seed; cut at 0 for a squared norm, which cannot be negative), and the theory's 1/x
    through the first run where ``axis_values`` gives every run a positive axis value."""
    means = [_number(metric_of(run.summary, metric)) for run in runs]
    if not any(math.isfinite(m) for m in means):
        no_data(ax, f"no {metric} measured")
        return
    nonnegative = "sq_norm" in metric
    errors = np.array([quantile_errors(list(per_seed(run.summary, metric).values()) if run.summary else [], m,
                                       nonnegative) for run, m in zip(runs, means, strict=True)]).T
    bars = errors.any(axis=0)
    x = np.arange(len(runs))
    ax.plot(x, means, "o-", color="C0", label=f"measured (seed mean{'; bars: ' + SEED_BAND if bars.any() else ''})")
    if bars.any():
        ax.errorbar(x[bars], np.asarray(means)[bars], yerr=errors[:, bars], fmt="none", ecolor="C0", capsize=3)
    if axis_values is not None and math.isfinite(means[0]) and all(v is not None and v > 0 for v in axis_values):
        first = axis_values[0]
        ax.plot(x, [means[0] * first / v for v in axis_values], "k--", lw=1, label="theory: $\\propto 1/x$")
    ends = [e for m, low, high in zip(means, *errors, strict=True) if math.isfinite(m) for e in (m - low, m + high)]
    if min(ends) > 0 and max(ends) / min(ends) > 20:
        ax.set_yscale("log")
    tilted = len(ticks) > 3
    ax.set_xticks(x, ticks, rotation=20 if tilted else 0, ha="right" if tilted else "center", fontsize=8)
    labels = {"grad_sq_norm": "final $\\|\\nabla L\\|^2$", "objective": f"final {objective_of(runs)}"}
    ax.set_ylabel(labels.get(metric, metric))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _titled(title: str, shared: Sequence[str]) -> str:
    """``title`` followed by the parts of the run labels that every run shares (left out of legend and ticks)."""
    return f"{title} ({', '.join(shared)} in all runs)" if shared else title


def _number(value: Any) -> float:
    """``value`` as a float; NaN for anything that is not a finite number (None, a boolean, a word)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else math.nan


def _axis_value(label: str) -> float | None:
    """The number of a one-axis label such as ``batch_size=16``."""
    if "," in label or "=" not in label:
        return None
    try:
        return float(label.split("=", 1)[1])
    except ValueError:
        return None

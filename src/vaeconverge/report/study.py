"""Figures of a sweep (a study along one or more axes), drawn from what the store holds: every run's
squared gradient norm and objective against iteration (seed means in 10-90% bands, the bound where one
applies), and the studied quantity at the end of the runs against the axis, with the theory's trend."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ..diagnostics.seeds import bands, seed_mean
from ..sweeps.grid import Finding
from .findings import metric_of

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# PNG metadata without the matplotlib version, so that a report rebuilt from the same store is byte-identical
PNG_METADATA = {"Software": None}


@dataclass(frozen=True)
class StudyRun:
    """One run of a study as the report sees it: its label, status, metric rows and summary."""

    label: str
    status: str
    metrics: Sequence[dict[str, float]]
    summary: dict[str, Any] | None


def plot_curves(runs: Sequence[StudyRun], path: str | Path, title: str) -> None:
    """||grad L||^2 (log-log, bound dashed) and the objective against iteration, one colour per run."""
    fig, (ax_grad, ax_obj) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for i, run in enumerate(r for r in runs if r.metrics):
        color = f"C{i % 10}"
        mean = seed_mean(run.metrics)
        steps = [row["step"] for row in mean]
        for ax, key in ((ax_grad, "grad_sq_norm"), (ax_obj, "objective")):
            points = [(s, row[key]) for s, row in zip(steps, mean, strict=True)
                      if math.isfinite(row[key]) and (key != "grad_sq_norm" or row[key] > 0)]
            if points:
                ax.plot(*zip(*points, strict=True), color=color, label=run.label)
            if len(run.metrics) > len(mean):  # several seeds
                band = bands(run.metrics, key)
                ax.fill_between(band["step"], band["q10"], band["q90"], color=color, alpha=0.15, lw=0)
        bound = [(s, row["bound"]) for s, row in zip(steps, mean, strict=True)
                 if math.isfinite(row.get("bound", math.nan)) and row["bound"] > 0]
        if bound:
            ax_grad.plot(*zip(*bound, strict=True), color=color, ls="--", lw=1)
    ax_grad.set_xscale("symlog", linthresh=1.0)
    ax_grad.set_yscale("log")
    ax_grad.set_xlabel("iteration n")
    ax_grad.set_ylabel("$\\|\\nabla L(\\theta_n)\\|^2$ (seed mean; dashed: bound)")
    ax_obj.set_xlabel("iteration n")
    ax_obj.set_ylabel("negative objective per example")
    for ax in (ax_grad, ax_obj):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=100, format="png", metadata=PNG_METADATA)
    plt.close(fig)


def plot_trend(runs: Sequence[StudyRun], finding: Finding | None, path: str | Path, title: str) -> None:
    """The final ||grad L||^2 of each run against its axis label (spread over seeds as error bars) with the
    finding's 1/x reference, and, beside it, the finding's own metric when that is another quantity."""
    metrics = ["grad_sq_norm"] + ([finding.metric] if finding and finding.metric != "grad_sq_norm" else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.2), constrained_layout=True,
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        reference = finding.reference if finding and finding.metric == metric else None
        _trend_panel(ax, runs, metric, reference)
    fig.suptitle(textwrap.fill(title, 90 * len(metrics)), fontsize=10)
    fig.savefig(path, dpi=100, format="png", metadata=PNG_METADATA)
    plt.close(fig)


def _trend_panel(ax: plt.Axes, runs: Sequence[StudyRun], metric: str, reference: str | None) -> None:
    labels = [run.label for run in runs]
    values = [metric_of(run.summary, metric) for run in runs]
    numeric = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan for v in values]
    spread = [metric_of(run.summary, f"bands.{metric}.std") for run in runs]
    errors = [s if isinstance(s, float) and math.isfinite(s) else 0.0 for s in spread]
    x = np.arange(len(runs))
    ax.errorbar(x, numeric, yerr=errors, fmt="o-", color="C0", capsize=3, label=f"measured {metric}")
    if reference == "1/x" and runs and math.isfinite(numeric[0]):
        axis_values = [_axis_value(label) for label in labels]
        if all(v is not None and v > 0 for v in axis_values):
            first = axis_values[0]
            ax.plot(x, [numeric[0] * first / v for v in axis_values], "k--", lw=1, label="theory: $\\propto 1/x$")
    finite = [v for v in numeric if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
    tilted = len(labels) > 3
    ax.set_xticks(x, labels, rotation=20 if tilted else 0, ha="right" if tilted else "center", fontsize=8)
    ax.set_ylabel(metric if metric != "grad_sq_norm" else "final $\\|\\nabla L\\|^2$ (seed mean)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _axis_value(label: str) -> float | None:
    """The number of a one-axis label such as ``batch_size=16``."""
    if "," in label or "=" not in label:
        return None
    try:
        return float(label.split("=", 1)[1])
    except ValueError:
        return None

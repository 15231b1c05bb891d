"""Matplotlib figures of a run: squared gradient norms on a log scale, and the objective.

A run of several seeds is drawn as its seed mean (the expectation the theorems bound) inside a band holding
the middle 80% of the seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ..diagnostics.seeds import bands, by_seed, seed_mean

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_convergence(metrics: Sequence[dict[str, float]], path: str | Path, title: str = "",
                     bound_label: str = "") -> None:
    """Two panels against iteration: ||grad L||^2 (full objective, its running minimum, minibatch mean, the
    paper's proxy, and the theoretical bound where one applies), and the objective; seed means with bands."""
    raw, seeds = metrics, len(by_seed(metrics))
    mean_of = f" (mean of {seeds} seeds)" if seeds > 1 else ""
    metrics = seed_mean(metrics)
    steps = [row["step"] for row in metrics]
    fig, (ax_grad, ax_obj) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    series = (  # key, label, style keywords
        ("grad_sq_norm", f"full-objective gradient{mean_of}", {"color": "C0"}),
        ("running_min", "running minimum", {"color": "C0", "alpha": 0.35, "lw": 3}),
        ("random_iterate", "random iterate $E\\|\\nabla L(\\theta_R)\\|^2$, $P(R=k)\\propto\\gamma_k$",
         {"color": "C0", "ls": "-."}),
        ("batch_grad_sq_norm", "minibatch gradient (window mean)", {"color": "C1", "ls": "--"}),
        ("paper_proxy", "paper's per-epoch proxy", {"color": "C2", "ls": ":", "marker": "o", "ms": 3}),
        ("bound", bound_label or "theoretical bound", {"color": "k", "lw": 1.5}),
    )
    running_min = np.fmin.accumulate([row["grad_sq_norm"] for row in metrics])
    for key, label, style in series:
        values = running_min if key == "running_min" else [row.get(key, math.nan) for row in metrics]
        points = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v) and v > 0]
        if points:
            ax_grad.plot(*zip(*points, strict=True), label=label, **style)
    if seeds > 1:
        _band(ax_grad, raw, "grad_sq_norm", "C0")
    ax_grad.set_yscale("log")
    ax_grad.set_xscale("symlog", linthresh=1.0)  # log-spaced checkpoints and power laws read as lines
    ax_grad.set_xlim(0, max(steps[-1], 1) * 1.2)
    ax_grad.set_xlabel("iteration n")
    ax_grad.set_ylabel("squared gradient norm")
    ax_grad.set_title("stationarity: $\\|\\nabla L(\\theta_n)\\|^2$")
    ax_grad.legend(fontsize=8)
    ax_grad.grid(True, which="both", alpha=0.3)

    ax_obj.plot(steps, [row["objective"] for row in metrics], color="C3", label=f"negative objective{mean_of}")
    if seeds > 1:
        _band(ax_obj, raw, "objective", "C3")
    if any(math.isfinite(row["log_likelihood"]) for row in metrics):
        ax_obj.plot(steps, [-row["log_likelihood"] for row in metrics], "--", color="C4",
                    label="exact $-\\log p(x)$")
    ax_obj.set_xlabel("iteration n")
    ax_obj.set_ylabel("per example (lower is better)")
    ax_obj.set_title("full training objective")
    ax_obj.legend(fontsize=8)
    ax_obj.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _band(ax: plt.Axes, metrics: Sequence[dict[str, float]], key: str, color: str) -> None:
    """Shade the 10%-90% range over seeds of ``key``."""
    band = bands(metrics, key)
    ax.fill_between(band["step"], band["q10"], band["q90"], color=color, alpha=0.18, lw=0,
                    label="10-90% of seeds")


def plot_run(metrics: Sequence[dict[str, float]], summary: dict[str, Any], path: str | Path,
             title: str | None = None) -> None:
    """``convergence.png`` of a run from its metrics rows and summary (bound label from the summary; the title,
    unless given, from its configuration)."""
    if title is None:
        c = summary["config"]
        fitted = f"BBVI of {c['target']}, {c['family']}" if c.get("kind") == "bbvi" else f"{c['model']} VAE"
        title = f"{fitted}, {c['objective']} (K={c['samples']}), {c['optimizer']}, B={c['batch_size']}"
    bound = summary.get("bound") or {}
    label = f"bound ({bound['name']}, estimated constants)" if bound.get("value") is not None else ""
    plot_convergence(metrics, path, title, label)

"""Matplotlib figures of a run: squared gradient norms on a log scale, and the objective."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_convergence(metrics: Sequence[dict[str, float]], path: str | Path, title: str = "",
                     bound_label: str = "") -> None:
    """Two panels against iteration: ||grad L||^2 (full objective, its running minimum, minibatch mean, the
    paper's proxy, and the theoretical bound where one applies), and the objective."""
    steps = [row["step"] for row in metrics]
    fig, (ax_grad, ax_obj) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    series = (
        ("grad_sq_norm", "full-objective gradient", "C0", "-"),
        ("batch_grad_sq_norm", "minibatch gradient (window mean)", "C1", "--"),
        ("paper_proxy", "paper's per-epoch proxy", "C2", ":"),
    )
    for key, label, colour, style in series:
        points = [(s, row[key]) for s, row in zip(steps, metrics, strict=True) if _positive(row[key])]
        if points:
            xs, ys = zip(*points, strict=True)
            ax_grad.plot(xs, ys, style, color=colour, label=label, marker="o" if len(xs) < 30 else None)
    full = [(s, row["grad_sq_norm"]) for s, row in zip(steps, metrics, strict=True) if _positive(row["grad_sq_norm"])]
    if full:
        xs, ys = zip(*full, strict=True)
        ax_grad.plot(xs, np.minimum.accumulate(ys), "-", color="C0", alpha=0.35, lw=3, label="running minimum")
    bound = [(s, row["bound"]) for s, row in zip(steps, metrics, strict=True) if _positive(row.get("bound", math.nan))]
    if bound:
        xs, ys = zip(*bound, strict=True)
        ax_grad.plot(xs, ys, "-", color="k", lw=1.5, label=bound_label or "theoretical bound")
    ax_grad.set_yscale("log")
    ax_grad.set_xlabel("iteration n")
    ax_grad.set_ylabel("squared gradient norm")
    ax_grad.set_title("stationarity: $\\|\\nabla L(\\theta_n)\\|^2$")
    ax_grad.legend(fontsize=8)
    ax_grad.grid(True, which="both", alpha=0.3)

    ax_obj.plot(steps, [row["objective"] for row in metrics], color="C3", label="negative objective")
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


def plot_run(metrics: Sequence[dict[str, float]], summary: dict[str, Any], path: str | Path) -> None:
    """``convergence.png`` of a run from its metrics rows and summary (title and bound label from the summary)."""
    c = summary["config"]
    title = f"{c['model']} VAE, {c['objective']} (K={c['samples']}), {c['optimizer']}, B={c['batch_size']}"
    bound = summary.get("bound") or {}
    label = f"bound ({bound['name']}, estimated constants)" if bound.get("value") is not None else ""
    plot_convergence(metrics, path, title, label)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0

"""Matplotlib figures of a run: squared gradient norms on a log scale, and the objective.

A run of several seeds is drawn as its seed mean (the expectation the theorems bound) inside a band holding
the middle 80% of the seeds, with a marker at every checkpoint. The y range is the measured data's: a bound far
above it is written as a note, not drawn. The helpers here also draw the figures of a sweep (``study.py``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..diagnostics.seeds import bands, by_seed, seed_mean

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# PNG metadata without the matplotlib version, so that a figure redrawn from the same numbers is byte-identical
PNG_METADATA = {"Software": None}
GENERIC_OBJECTIVE = "negative objective per example"
SEED_BAND = "10-90% of seeds"
NOT_POSITIVE = "estimate ≤ 0 (lost in Monte Carlo noise)"
VACUOUS = 100.0  # a bound more than this many times the largest measured value of its panel is only a note
_PART = re.compile(r", (?=[^\s,=]+=)")  # between the key=value parts of a run label (a value may hold ", ")


def objective_label(config: dict[str, Any] | None, detail: bool = True) -> str:
    """What the plotted loss is, from a run's configuration: the negative ELBO (beta-ELBO) or IWAE bound, per
    example for a VAE and over the whole data for BBVI; with K and beta when ``detail``; generic if unknown."""
    config = config or {}
    name = {"elbo": "ELBO", "iwae": "IWAE bound"}.get(config.get("objective", ""))
    if name is None:
        return GENERIC_OBJECTIVE
    beta = config.get("beta", 1.0)
    name = "β-ELBO" if name == "ELBO" and beta != 1 else name
    details = [f"K={config['samples']}"] if detail and name == "IWAE bound" and "samples" in config else []
    details += [f"β={beta:g}"] if detail and name == "β-ELBO" else []
    if config.get("kind") == "bbvi":
        return f"negative {name} ({', '.join(['whole data', *details])})"
    return f"negative {name} per example" + (f" ({', '.join(details)})" if details else "")


def split_labels(labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """Run labels such as ``activation=relu, softclip_s=5`` without the ``key=value`` parts all of them share,
    and those shared parts; the labels unchanged (nothing shared) where they do not differ or one would be empty."""
    parts = [_PART.split(label) for label in labels]
    shared = [p for p in parts[0] if all(p in other for other in parts[1:])] if parts else []
    varying = [", ".join(p for p in own if p not in shared) for own in parts]
    if len(set(labels)) < 2 or not all(varying):
        return list(labels), []
    return varying, shared


def significant(value: float) -> str:
    """``value`` to 2 significant digits with a bare exponent (2.3e8, 0.05, 140), for notes on a figure."""
    mantissa, _, exponent = f"{value:.2g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def vacuous(bound: Sequence[float], measured_max: float) -> bool:
    """Whether every finite value of a bound lies more than :data:`VACUOUS` times above the largest measured value
    of its panel: drawn, it would set the y range and flatten the data, while saying nothing about them."""
    finite = [v for v in bound if math.isfinite(v)]
    return bool(finite) and min(finite) > VACUOUS * measured_max


def vacuous_note(bound: Sequence[float]) -> str:
    """The note that replaces a vacuous bound on a figure: its last finite value, e.g. ``bound 2.3e8: vacuous``."""
    return f"bound {significant([v for v in bound if math.isfinite(v)][-1])}: vacuous"


def quantile_errors(values: Sequence[float], center: float, nonnegative: bool) -> tuple[float, float]:
    """The lengths below and above ``center`` of a bar from the 10% to the 90% quantile of ``values`` (one per
    seed), its lower end clipped at 0 for a quantity that cannot be negative; no bar for fewer than two seeds."""
    if len(values) < 2 or not math.isfinite(center):
        return 0.0, 0.0
    low, high = (float(q) for q in np.quantile(values, [0.1, 0.9]))
    low = max(low, 0.0) if nonnegative else low
    return max(center - low, 0.0), max(high - center, 0.0)


def log_floor(values: Sequence[float]) -> float | None:
    """The bottom of a log panel: a tenth of its smallest positive line value (None without one), where bands
    reaching zero or below are cut, so that noise near zero does not stretch the axis over decades."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return min(positive) / 10 if positive else None


def measured_line(ax: plt.Axes, steps: Sequence[float], values: Sequence[float], log: bool,
                  **style: Any) -> list[float]:
    """Draw ``values`` with a marker at each checkpoint (checkpoints can be far apart), broken rather than bridged
    where a value is missing or, on a log panel, not positive; return the steps of those a log panel cannot place."""
    y = np.asarray(values, dtype=np.float64)
    hidden = np.isfinite(y) & (y <= 0) if log else np.zeros(len(y), dtype=bool)
    y = np.where(np.isfinite(y) & ~hidden, y, np.nan)
    if np.isfinite(y).any():
        ax.plot(steps, y, **{"marker": "o", "ms": 3.5, **style})
    return [s for s, h in zip(steps, hidden, strict=True) if h]


def mark_not_positive(ax: plt.Axes, steps: Sequence[float], color: str, label: str | None = None) -> None:
    """Mark with hollow triangles along the bottom of a log panel the checkpoints it cannot place (an unbiased
    estimate at or below zero), so that a gap in a line is never silent."""
    if steps:
        ax.plot(steps, [0.03] * len(steps), ls="none", marker="v", ms=6, mfc="none", color=color,
                transform=ax.get_xaxis_transform(), scaley=False, label=label)


def seed_band(ax: plt.Axes, metrics: Sequence[dict[str, float]], key: str, color: str, floor: float | None = None,
              label: str | None = None) -> list[float]:
    """Shade the 10%-90% range over seeds of ``key``; on a log panel its lower edge is cut at ``floor`` and it is
    left out where even the 90% quantile is below it. Returns the finite upper edges, for the panel's range."""
    band = bands(metrics, key)
    low, high = np.asarray(band["q10"]), np.asarray(band["q90"])
    if floor is not None:
        low, high = np.fmax(low, floor), np.where(high > floor, high, np.nan)
    shown = np.isfinite(low) & np.isfinite(high)
    if shown.any():
        ax.fill_between(band["step"], low, high, where=shown, color=color, alpha=0.18, lw=0, label=label)
    return [float(v) for v in high[shown]]


def draw_bound(ax: plt.Axes, steps: Sequence[float], bound: Sequence[float], measured_max: float,
               **style: Any) -> None:
    """Draw a bound that is not vacuous without letting it set the y range: the range grows to show its values
    up to :data:`VACUOUS` times the largest measured one, no further."""
    ax.plot(steps, bound, scaley=False, **style)
    shown = [v for v in bound if math.isfinite(v) and v <= VACUOUS * measured_max]
    bottom, top = ax.get_ylim()
    if shown and max(shown) > top:
        ax.set_ylim(bottom, max(shown) * (1.5 if ax.get_yscale() == "log" else 1.05))


def note(ax: plt.Axes, lines: Sequence[str]) -> None:
    """Write ``lines`` (vacuous bounds) in the upper right corner of a panel, legible over any line there (the
    legend makes way)."""
    if lines:
        ax.text(0.98, 0.97, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})


def no_data(ax: plt.Axes, text: str) -> None:
    """A panel with nothing to draw: no frame, no legend, a short sentence saying why."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, wrap=True)


def steps_axis(axes: Sequence[plt.Axes], last_step: float) -> None:
    """The iteration axis the panels of a figure share: symlog from 0, so that log-spaced checkpoints and power
    laws read as lines while step 0 stays on the axis."""
    for ax in axes:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(0, max(last_step, 1) * 1.2)
        ax.set_xlabel("iteration n")


def gradient_panel(ax: plt.Axes, metrics: Sequence[dict[str, float]], bound_label: str = "") -> None:
    """||grad L||^2 against iteration on a log scale: the full objective's (seed mean in its band, running minimum,
    random iterate), the single-replicate reading beside it to show its bias, the minibatch mean, the paper's
    proxy, and the theoretical bound where one applies and is not vacuous."""
    seeds = len(by_seed(metrics))
    mean = seed_mean(metrics)
    steps = [row["step"] for row in mean]
    column = {key: [row.get(key, math.nan) for row in mean] for key in (
        "grad_sq_norm", "grad_sq_norm_biased", "random_iterate", "batch_grad_sq_norm", "paper_proxy", "bound")}
    column["running_min"] = np.fmin.accumulate(column["grad_sq_norm"]).tolist()
    series = (  # key, label, style keywords
        ("grad_sq_norm", f"full-objective gradient (mean of {seeds} seeds)" if seeds > 1 else
         "full-objective gradient", {"color": "C0"}),
        ("grad_sq_norm_biased", "single-replicate reading (biased)",
         {"color": "C0", "ls": ":", "alpha": 0.45, "marker": ".", "ms": 4}),
        ("running_min", "running minimum", {"color": "C0", "alpha": 0.35, "lw": 3, "marker": None}),
        ("random_iterate", "random iterate $E\\|\\nabla L(\\theta_R)\\|^2$, $P(R=k)\\propto\\gamma_k$",
         {"color": "C0", "ls": "-.", "marker": "s", "ms": 3}),
        ("batch_grad_sq_norm", "minibatch gradient (window mean)", {"color": "C1", "ls": "--", "marker": "^"}),
        ("paper_proxy", "paper's per-epoch proxy", {"color": "C2", "ls": ":", "marker": "D", "ms": 3}),
    )
    lines = [v for key, _, _ in series for v in column[key]]
    floor = log_floor(lines)
    if floor is None:
        no_data(ax, "no positive estimate of $\\|\\nabla L\\|^2$ to draw on a log scale"
                    + (" (every one ≤ 0: lost in Monte Carlo noise)" if any(v <= 0 for v in lines) else ""))
        return
    ax.set_yscale("log")
    for key, label, style in series:
        hidden = measured_line(ax, steps, column[key], log=True, label=label, **style)
        if key == "grad_sq_norm":
            mark_not_positive(ax, hidden, "C0", NOT_POSITIVE)
    tops = seed_band(ax, metrics, "grad_sq_norm", "C0", floor, SEED_BAND) if seeds > 1 else []
    measured_max = max(v for v in [*lines, *tops] if math.isfinite(v))
    bound = [v if v > 0 else math.nan for v in column["bound"]]
    if vacuous(bound, measured_max):
        note(ax, [vacuous_note(bound)])
    elif any(math.isfinite(v) for v in bound):
        draw_bound(ax, steps, bound, measured_max, color="k", lw=1.5, label=bound_label or "theoretical bound")
    ax.set_ylabel("squared gradient norm")
    ax.set_title("stationarity: $\\|\\nabla L(\\theta_n)\\|^2$")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def objective_panel(ax: plt.Axes, metrics: Sequence[dict[str, float]], objective: str = GENERIC_OBJECTIVE) -> None:
    """The training objective (named ``objective``) against iteration, seed mean in its band, with the exact
    negative log-likelihood where the model has one."""
    seeds = len(by_seed(metrics))
    mean = seed_mean(metrics)
    steps = [row["step"] for row in mean]
    values = [row["objective"] for row in mean]
    exact = [-row.get("log_likelihood", math.nan) for row in mean]
    if not any(math.isfinite(v) for v in [*values, *exact]):
        no_data(ax, "no objective measured")
        return
    measured_line(ax, steps, values, log=False, color="C3",
                  label=f"seed mean of {seeds}" if seeds > 1 else "measured")
    if seeds > 1:
        seed_band(ax, metrics, "objective", "C3", label=SEED_BAND)
    measured_line(ax, steps, exact, log=False, color="C4", ls="--", marker="s", ms=3, label="exact $-\\log p(x)$")
    ax.set_ylabel(objective)
    ax.set_title("full training objective (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)


def convergence_figure(metrics: Sequence[dict[str, float]], title: str = "", bound_label: str = "",
                       objective: str = GENERIC_OBJECTIVE) -> Figure:
    """Two panels against iteration on one symlog axis: ||grad L||^2 (:func:`gradient_panel`) and the objective
    called ``objective`` (:func:`objective_panel`). Not registered with pyplot: nothing to close, and a notebook
    shows it once, where it is returned."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_grad, ax_obj = fig.subplots(1, 2, sharex=True)
    if metrics:
        gradient_panel(ax_grad, metrics, bound_label)
        objective_panel(ax_obj, metrics, objective)
        steps_axis((ax_grad, ax_obj), max(row["step"] for row in metrics))
    else:
        for ax in (ax_grad, ax_obj):
            no_data(ax, "no checkpoint measured")
    if title:
        fig.suptitle(title)
    return fig


def save_png(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` to ``path`` as the PNG every run folder holds (same numbers, same bytes)."""
    fig.savefig(path, dpi=110, format="png", metadata=PNG_METADATA)


def plot_convergence(metrics: Sequence[dict[str, float]], path: str | Path, title: str = "",
                     bound_label: str = "", objective: str = GENERIC_OBJECTIVE) -> None:
    """Write :func:`convergence_figure` to ``path`` as a PNG."""
    save_png(convergence_figure(metrics, title, bound_label, objective), path)


def run_figure(metrics: Sequence[dict[str, float]], summary: dict[str, Any], title: str | None = None) -> Figure:
    """The convergence figure of a run from its metrics rows and summary (bound label and the objective's name from
    the summary; the title, unless given, from its configuration)."""
    if title is None:
        c = summary["config"]
        fitted = f"BBVI of {c['target']}, {c['family']}" if c.get("kind") == "bbvi" else f"{c['model']} VAE"
        title = f"{fitted}, {c['objective']} (K={c['samples']}), {c['optimizer']}, B={c['batch_size']}"
    bound = summary.get("bound") or {}
    label = f"bound ({bound['name']}, estimated constants)" if bound.get("value") is not None else ""
    return convergence_figure(metrics, title, label, objective=objective_label(summary.get("config")))


def plot_run(metrics: Sequence[dict[str, float]], summary: dict[str, Any], path: str | Path,
             title: str | None = None) -> None:
    """Write ``convergence.png`` of a run (:func:`run_figure`) to ``path``."""
    save_png(run_figure(metrics, summary, title), path)

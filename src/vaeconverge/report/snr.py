"""The gradient-SNR scaling of a study whose runs measured it (``snr = true``; finding ``expect = "snr-scaling"``).

Rainforth et al. (2018), for IWAE's own gradient with K importance samples and minibatch B: the decoder's SNR
grows like sqrt(B K) and the encoder's like sqrt(B / K), slopes +1/2 and -1/2 of log SNR against log K, and +1/2
for both against log B. Each seed gives its own least-squares fit of log SNR on log K and log B over the runs of
one variant of the objective (IWAE, IWAE with DReG gradients, VR-IWAE of some alpha); the seeds' slopes give the
mean and its interval (``diagnostics/rate.py``'s :func:`mean_interval`).

Two checkpoints are read: step 0, where every run of a seed has the same weights (its initialisation does not
depend on K or B), so that the fit compares the estimators at fixed parameters as the claim does; and the last,
where each run sits at its own trained point, whose mean gradient has shrunk with training, so that the slopes
mix the estimator's SNR with how far each run went. The verdict reads step 0: the IWAE variant's slopes agree
when each is resolved in the predicted direction. The predictions are per data point: with fresh minibatches the
variance between examples does not fall with K, which caps the decoder's K-slope below +1/2 once it dominates.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ..diagnostics.rate import INTERVAL_LEVEL, mean_interval
from .figures import PNG_METADATA, SEED_BAND, quantile_errors
from .findings import Verdict

matplotlib.use("Agg")
import matplotlib.pyplot as plt

AXES = {"samples": "K", "batch_size": "B"}  # configuration key -> the theory's letter
GROUPS = ("encoder", "decoder")
READINGS = (*GROUPS, *(f"norm_{group}" for group in GROUPS))  # Rainforth's per-coordinate SNR, then the norm one
ENDS = {"start": "step 0", "end": "last checkpoint"}
# Slope of log SNR against log axis for IWAE's own gradient (Rainforth et al. 2018), per (axis, group).
PREDICTED = {("samples", "encoder"): -0.5, ("samples", "decoder"): 0.5,
             ("batch_size", "encoder"): 0.5, ("batch_size", "decoder"): 0.5}
BASELINE = "iwae"


@dataclass(frozen=True)
class Slope:
    """The seeds' mean slope of log ``reading`` against log ``axis`` within one ``variant`` at checkpoint ``end``,
    with its interval over ``seeds`` seeds, and the slope predicted for it (None: no prediction)."""

    variant: str
    end: str
    reading: str
    axis: str
    mean: float
    low: float
    high: float
    seeds: int
    predicted: float | None

    @property
    def direction(self) -> int:
        """+1 or -1 where the interval excludes 0, else 0 (unresolved)."""
        return int(np.sign(self.mean)) if (self.low > 0 or self.high < 0) else 0


def variant(config: dict[str, Any]) -> str:
    """The objective of a run and its gradient options, e.g. ``iwae``, ``iwae, estimator=dreg``,
    ``vr-iwae, alpha=0.5``; VR-IWAE of alpha 0 is IWAE itself (its bound and gradient are IWAE's)."""
    name, alpha, estimator = config.get("objective", "?"), config.get("alpha"), config.get("estimator", "standard")
    if name == "vr-iwae" and alpha == 0:
        return BASELINE
    return ", ".join([name, *([f"estimator={estimator}"] if estimator != "standard" else []),
                      *([f"alpha={alpha:g}"] if alpha is not None else [])])


def _per_seed(summary: dict[str, Any], end: str, reading: str) -> dict[int, float]:
    """Each seed's ``reading`` at checkpoint ``end`` (finite, positive values only: a log is taken)."""
    out = {}
    for entry in summary.get("per_seed") or []:
        value = ((entry.get("snr") or {}).get(end) or {}).get(reading)
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            out[int(entry["seed"])] = float(value)
    return out


def fit_slopes(summaries: Sequence[dict[str, Any] | None]) -> list[Slope]:
    """Every variant's slopes, per checkpoint, reading and axis that varies among its runs (at least two values),
    from the seeds that have a positive reading in each of the variant's runs."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for summary in summaries:
        if summary and summary.get("snr"):
            runs.setdefault(variant(summary["config"]), []).append(summary)
    slopes = []
    for name, own in runs.items():
        axes = [axis for axis in AXES if len({run["config"][axis] for run in own}) > 1]
        if not axes:
            continue
        design = np.array([[1.0, *(math.log(run["config"][axis]) for axis in axes)] for run in own])
        for end in ENDS:
            for reading in READINGS:
                values = [_per_seed(run, end, reading) for run in own]
                seeds = sorted(set.intersection(*(set(v) for v in values)))
                if not seeds:
                    continue
                logs = np.log([[v[seed] for v in values] for seed in seeds]).T  # runs x seeds
                coefficients = np.linalg.lstsq(design, logs, rcond=None)[0]  # (1 + axes) x seeds
                group = reading.removeprefix("norm_")
                for i, axis in enumerate(axes, start=1):
                    mean, low, high = mean_interval(coefficients[i])
                    predicted = PREDICTED.get((axis, group)) if name == BASELINE else None
                    slopes.append(Slope(name, end, reading, axis, mean, low, high, len(seeds), predicted))
    return slopes


def lifts(summaries: Sequence[dict[str, Any] | None], end: str = "start") -> dict[str, tuple[float, float, float]]:
    """Per variant other than IWAE: its encoder SNR (Rainforth's) over IWAE's at the largest K, as the seeds' mean
    factor and interval (paired by seed and by B, the log ratio averaged over the B values)."""
    by_key: dict[tuple[str, int, int], dict[int, float]] = {}
    for summary in summaries:
        if summary and summary.get("snr"):
            config = summary["config"]
            by_key[(variant(config), config["samples"], config["batch_size"])] = _per_seed(summary, end, "encoder")
    if not by_key:
        return {}
    largest = max(k for _, k, _ in by_key)
    out = {}
    for name in sorted({v for v, _, _ in by_key} - {BASELINE}):
        pairs = [(own, by_key[(BASELINE, largest, b)]) for (v, k, b), own in by_key.items()
                 if v == name and k == largest and (BASELINE, largest, b) in by_key]
        seeds = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs))) if pairs else []
        if seeds:
            logs = [np.mean([math.log(a[seed] / b[seed]) for a, b in pairs]) for seed in seeds]
            mean, low, high = mean_interval(logs)
            out[name] = (math.exp(mean), math.exp(low), math.exp(high))
    return out


def scaling_verdict(summaries: Sequence[dict[str, Any] | None]) -> Verdict:
    """Whether IWAE's slopes at step 0 (Rainforth's per-coordinate SNR) go the predicted ways: agrees when every
    predicted slope is resolved in its direction, disagrees when one is resolved against it, else inconclusive;
    the detail gives those slopes and each other variant's encoder slope and lift at the largest K."""
    slopes = fit_slopes(summaries)
    claims = [s for s in slopes if s.predicted is not None and s.end == "start" and s.reading in GROUPS]
    if not claims:
        return Verdict(None, "no IWAE runs with gradient SNR along K or B to fit")
    level = f"{INTERVAL_LEVEL:.0%} intervals over {claims[0].seeds} seeds"
    parts = [f"{s.reading} vs {AXES[s.axis]}: {_interval(s)} (predicted {s.predicted:+g})" for s in claims]
    others = [s for s in slopes if s.variant != BASELINE and s.end == "start" and s.reading == "encoder"
              and s.axis == "samples"]
    parts += [f"{s.variant} encoder vs K: {_interval(s)}" for s in others]
    parts += [f"{name} encoder SNR at the largest K: x{m:.3g} [{lo:.3g}, {hi:.3g}] of IWAE's"
              for name, (m, lo, hi) in lifts(summaries).items()]
    detail = f"IWAE at step 0 (same weights in every run of a seed; {level}): " + "; ".join(parts)
    directions = [s.direction * np.sign(s.predicted) for s in claims]
    agrees = False if -1 in directions else True if all(d == 1 for d in directions) else None
    return Verdict(agrees, detail)


def slope_rows(summaries: Sequence[dict[str, Any] | None]) -> list[list[str]]:
    """The table of every fitted slope: variant, checkpoint, reading, axis, measured slope [interval], prediction."""
    return [[s.variant, ENDS[s.end], s.reading, f"log {AXES[s.axis]}", _interval(s),
             "" if s.predicted is None else f"{s.predicted:+g}", str(s.seeds)] for s in fit_slopes(summaries)]


SLOPE_HEADER = ("variant", "checkpoint", "SNR", "against", "slope [interval]", "predicted", "seeds")


def plot_snr(summaries: Sequence[dict[str, Any] | None], path: str | Path, title: str) -> None:
    """Rainforth's SNR of the encoder and the decoder (columns) against K on log-log axes, at step 0 and at the last
    checkpoint (rows): a colour per variant, a line style per B (seed means, bars over the seeds), and the predicted
    slopes drawn through IWAE's first point at each B."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), constrained_layout=True, squeeze=False)
    lines: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for summary in summaries:
        if summary and summary.get("snr"):
            lines.setdefault((variant(summary["config"]), summary["config"]["batch_size"]), []).append(summary)
    variants = sorted({name for name, _ in lines}, key=lambda name: (name != BASELINE, name))
    batches = sorted({batch for _, batch in lines})
    ks = sorted({run["config"]["samples"] for own in lines.values() for run in own})
    for row, end in enumerate(ENDS):
        for column, group in enumerate(GROUPS):
            ax = axes[row][column]
            for (name, batch), own in sorted(lines.items()):
                own = sorted(own, key=lambda run: run["config"]["samples"])
                k = [run["config"]["samples"] for run in own]
                seeds = [list(_per_seed(run, end, group).values()) for run in own]
                means = [float(np.mean(v)) if v else math.nan for v in seeds]
                errors = np.array([quantile_errors(v, m, True) for v, m in zip(seeds, means, strict=True)]).T
                style = batches.index(batch)
                ax.errorbar(k, means, yerr=errors, marker="os^D"[style % 4], ms=4, capsize=3,
                            ls=("-", ":", "--", "-.")[style % 4], color=f"C{variants.index(name) % 10}",
                            label=f"{name}, B={batch}")
                slope = PREDICTED.get(("samples", group))
                if name == BASELINE and slope is not None and math.isfinite(means[0]):
                    ax.plot(k, [means[0] * (kk / k[0]) ** slope for kk in k], color="k", ls="--", lw=0.8,
                            label=f"predicted for IWAE: slope {slope:+g}" if style == 0 else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xticks([], minor=True)
            ax.set_xlabel("K (importance samples)")
            ax.set_ylabel(f"{group} gradient SNR (mean over coordinates)")
            ax.set_title(f"{group}, {ENDS[end]}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, title=f"bars: {SEED_BAND}", title_fontsize=7)
    fig.suptitle(textwrap.fill(title, 130), fontsize=9)
    fig.savefig(path, dpi=100, format="png", metadata=PNG_METADATA)
    plt.close(fig)


def _interval(slope: Slope) -> str:
    bounds = f" [{slope.low:+.2f}, {slope.high:+.2f}]" if math.isfinite(slope.low) else " (one seed)"
    return f"{slope.mean:+.2f}{bounds}"

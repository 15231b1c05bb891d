"""Whether a sweep's measured numbers agree with the finding its specification states (``[finding]``).

A trend is decided by the seeds: every run of a sweep trains the same seeds, so each seed gives its own value of
the metric at every run, and a comparison between runs is paired by seed. The finding "agrees" or "disagrees"
only where the seeds' interval (at :data:`~vaeconverge.diagnostics.rate.INTERVAL_LEVEL`) resolves the direction;
otherwise it is "inconclusive", with the interval shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..diagnostics.rate import INTERVAL_LEVEL, mean_interval
from ..sweeps.grid import Finding


@dataclass(frozen=True)
class Verdict:
    """``agrees`` is None when the runs cannot decide: unresolved by the seeds, unfinished runs, a missing metric."""

    agrees: bool | None
    detail: str

    @property
    def word(self) -> str:
        return {True: "agrees", False: "disagrees", None: "inconclusive"}[self.agrees]


def metric_of(summary: dict[str, Any] | None, metric: str) -> Any:
    """``summary[a][b]`` for ``metric`` "a.b"; None where absent."""
    value: Any = summary
    for key in metric.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def per_seed(summary: dict[str, Any], metric: str) -> dict[int, float]:
    """The value of ``metric`` for each seed of a run (its ``per_seed`` entries; the run's own value under seed 0
    where it has none), finite values only."""
    entries = summary.get("per_seed") or [{"seed": 0, **summary}]
    values = {int(entry["seed"]): metric_of(entry, metric) for entry in entries}
    return {seed: float(v) for seed, v in values.items() if _finite(v)}


def check(finding: Finding, labels: Sequence[str], summaries: Sequence[dict[str, Any] | None]) -> Verdict:
    """Hold the finding against the runs' summaries (None for a run that did not finish), in sweep order."""
    values = [metric_of(summary, finding.metric) for summary in summaries]
    missing = [label for label, value, summary in zip(labels, values, summaries, strict=True)
               if summary is None or value is None or (isinstance(value, float) and not math.isfinite(value))]
    if missing:
        return Verdict(None, f"no {finding.metric} for {', '.join(missing)} (not finished, or not measured)")
    if finding.expect == "snr-scaling":  # read at step 0, before any encoder could collapse
        from .snr import scaling_verdict  # which builds on this module's Verdict

        return scaling_verdict(summaries)
    collapsed = [label for label, summary in zip(labels, summaries, strict=True) if summary.get("collapsed")]
    caveat = f"; collapsed runs (the encoder ignores x): {', '.join(collapsed)}" if collapsed else ""
    if finding.expect == "all-true":
        shown = ", ".join(f"{label}: {value}" for label, value in zip(labels, values, strict=True))
        return Verdict(all(bool(v) for v in values), f"{finding.metric} per run: {shown}{caveat}")
    if len(values) < 2:
        return Verdict(None, f"a trend needs at least two runs{caveat}")
    seeds_of = [per_seed(summary, finding.metric) for summary in summaries]
    common = sorted(set.intersection(*(set(s) for s in seeds_of)))
    table = np.array([[s[seed] for s in seeds_of] for seed in common]).reshape(len(common), len(labels))
    shown = ", ".join(f"{label}: {_shown(value)}" for label, value in zip(labels, values, strict=True))
    if finding.expect == "lowest-at":
        verdict = _lowest_at(table, list(labels), finding.at)
    else:
        verdict = _trend(table, finding.expect)
    return Verdict(verdict.agrees, f"{verdict.detail}; {finding.metric} per run (seed mean): {shown}{caveat}")


def _trend(table: np.ndarray, expect: str) -> Verdict:
    """Each seed's least-squares slope of the metric along the runs (seeds x runs), and their interval."""
    position = np.arange(table.shape[1]) - (table.shape[1] - 1) / 2
    slopes = table @ position / np.square(position).sum()
    mean, low, high = mean_interval(slopes)
    interval = (f"slope along the runs {mean:.3g} per run, {INTERVAL_LEVEL:.0%} interval [{low:.3g}, {high:.3g}] "
                f"over {len(slopes)} seeds ({expect} expected)")
    if not (math.isfinite(low) and math.isfinite(high)):
        return Verdict(None, f"{interval}: one seed cannot resolve a trend")
    if high < 0 or low > 0:  # the direction is resolved
        return Verdict((high < 0) == (expect == "decreasing"), interval)
    return Verdict(None, f"{interval}: the interval contains 0")


def _lowest_at(table: np.ndarray, labels: list[str], at: str | None) -> Verdict:
    """The run ``at`` against every other run, paired by seed: agrees if resolved lower than each, disagrees if
    resolved higher than one."""
    if at not in labels:
        return Verdict(None, f"no run labelled {at!r}")
    j = labels.index(at)
    above, unresolved = [], []
    for k, label in enumerate(labels):
        if k == j:
            continue
        mean, low, high = mean_interval(table[:, j] - table[:, k])
        text = f"{at} - {label}: {mean:.3g} [{low:.3g}, {high:.3g}]"
        if low > 0:
            above.append(text)
        elif not high < 0:
            unresolved.append(text)
    level = f"{INTERVAL_LEVEL:.0%} intervals over {len(table)} seeds"
    if above:
        return Verdict(False, f"{at} is resolved above another run ({'; '.join(above)}; {level})")
    if unresolved:
        return Verdict(None, f"{at} is not resolved below every run ({'; '.join(unresolved)}; {level})")
    return Verdict(True, f"{at} is resolved below every other run ({level})")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

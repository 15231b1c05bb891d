"""Whether a sweep's measured numbers agree with the finding its specification states (``[finding]``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..sweeps.grid import Finding


@dataclass(frozen=True)
class Verdict:
    """``agrees`` is None when the runs cannot decide (unfinished runs, a missing metric)."""

    agrees: bool | None
    detail: str

    @property
    def word(self) -> str:
        return {True: "agrees", False: "disagrees", None: "undecided"}[self.agrees]


def metric_of(summary: dict[str, Any] | None, metric: str) -> Any:
    """``summary[a][b]`` for ``metric`` "a.b"; None where absent."""
    value: Any = summary
    for key in metric.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def check(finding: Finding, labels: Sequence[str], summaries: Sequence[dict[str, Any] | None]) -> Verdict:
    """Hold the finding against the runs' summaries (None for a run that did not finish), in sweep order."""
    values = [metric_of(summary, finding.metric) for summary in summaries]
    missing = [label for label, value in zip(labels, values, strict=True)
               if value is None or (isinstance(value, float) and not math.isfinite(value))]
    if missing:
        return Verdict(None, f"no {finding.metric} for {', '.join(missing)} (not finished, or not measured)")
    shown = ", ".join(f"{label}: {_shown(value)}" for label, value in zip(labels, values, strict=True))
    if finding.expect == "all-true":
        return Verdict(all(bool(v) for v in values), f"{finding.metric} per run: {shown}")
    if len(values) < 2:
        return Verdict(None, "a trend needs at least two runs")
    if finding.expect == "lowest-at":
        lowest = labels[min(range(len(values)), key=values.__getitem__)]
        return Verdict(lowest == finding.at, f"lowest {finding.metric} at {lowest} (expected {finding.at}); {shown}")
    steps = [b - a for a, b in itertools.pairwise(values)]
    ok = all(step < 0 for step in steps) if finding.expect == "decreasing" else all(step > 0 for step in steps)
    return Verdict(ok, f"{finding.metric} along the runs ({finding.expect} expected): {shown}")


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

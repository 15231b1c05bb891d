"""A run's folder as a reader finds it: the tables (``engine/outputs.py``), convergence.png and, for a trained
run, checkpoint.pt, each written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..engine.checkpoint import atomic_write
from ..engine.outputs import write_tables
from .figures import plot_run


class FinishedRun(Protocol):
    """A finished (or interrupted) run: ``engine.train``'s and ``bbvi.train``'s results."""

    metrics: list[dict[str, float]]
    summary: dict[str, Any]

    def save_checkpoint(self, path: str | Path) -> None: ...


def write_run(out_dir: str | Path, result: FinishedRun) -> Path:
    """Write every output of ``result`` into ``out_dir`` (created if needed); return the directory."""
    out = write_measurements(out_dir, result.metrics, result.summary)
    result.save_checkpoint(out / "checkpoint.pt")
    return out


def write_measurements(out_dir: str | Path, metrics: list[dict[str, float]], summary: dict[str, Any],
                       title: str | None = None) -> Path:
    """Write metrics.csv, bands.csv, summary.json and convergence.png (titled ``title``, else after the run's
    configuration) into ``out_dir``, created if needed; return the directory."""
    out = write_tables(out_dir, metrics, summary)
    atomic_write(out / "convergence.png", lambda tmp: plot_run(metrics, summary, tmp, title))
    return out

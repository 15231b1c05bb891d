"""A run's folder as a reader finds it: the tables (``engine/outputs.py``), convergence.png and, for a trained
run, checkpoint.pt, each written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from ..engine.checkpoint import atomic_write
from ..engine.outputs import write_tables
from ..validation import ConfigError
from .figures import plot_run


class FinishedRun(Protocol):
    """A finished (or interrupted) run: ``engine.train``'s and ``bbvi.train``'s results."""

    metrics: list[dict[str, float]]
    summary: dict[str, Any]

    def save_checkpoint(self, path: str | Path) -> None: ...


# The files that make a folder a run folder: one of them there means --out would replace an earlier run.
RUN_FILES = ("summary.json", "metrics.csv", "checkpoint.pt")


def check_output_folder(out_dir: Path, option: str, *, overwrite: bool = False, holds_runs: bool = True,
                        overwrite_option: str = "--overwrite") -> None:
    """Refuse, before any work, an output folder that could not be written or would silently replace a run: a
    path that exists and is not a folder, a folder already holding a run (where ``holds_runs``, unless
    ``overwrite``, which the error calls ``overwrite_option``), or one whose nearest existing ancestor is not a
    writable folder. Creates nothing; a :class:`ConfigError` for ``option`` names the problem."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(option, f"{out_dir} exists and is not a directory")
        present = [name for name in RUN_FILES if (out_dir / name).exists()]
        if present and holds_runs and not overwrite:
            raise ConfigError(option, f"{out_dir} already holds a run ({', '.join(present)}); pass {overwrite_option} "
                                      "to replace it")
    ancestor = out_dir.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(option, f"cannot create {out_dir}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(option, f"cannot write into {ancestor} (permission denied)")


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

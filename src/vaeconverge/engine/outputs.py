"""A run's directory: metrics.csv, summary.json, convergence.png and checkpoint.pt, each written atomically."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ..report.figures import plot_run
from .checkpoint import atomic_write, save_checkpoint
from .train import METRIC_COLUMNS, TrainResult


def write_run(out_dir: str | Path, result: TrainResult) -> Path:
    """Write every output of ``result`` into ``out_dir`` (created if needed); return the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write_metrics(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(result.metrics)

    atomic_write(out / "metrics.csv", write_metrics)
    summary = json.dumps(json_ready(result.summary), indent=2, allow_nan=False) + "\n"
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(summary))
    atomic_write(out / "convergence.png", lambda tmp: plot_run(result.metrics, result.summary, tmp))
    save_checkpoint(out / "checkpoint.pt", result.model, result.optimizer, result.scheduler, result.config,
                    result.summary["steps"], result.dataset.x.shape[1])
    return out


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so that the JSON written is standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def read_run(run_dir: str | Path) -> tuple[list[dict[str, float]], dict]:
    """The metrics rows (floats; empty cells as NaN) and the summary of a run directory."""
    run = Path(run_dir)
    for name in ("metrics.csv", "summary.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: not a run directory (no {name})")
    with (run / "metrics.csv").open(newline="") as handle:
        metrics = [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                   for row in csv.DictReader(handle)]
    return metrics, json.loads((run / "summary.json").read_text())

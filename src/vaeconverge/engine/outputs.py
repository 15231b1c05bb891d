"""A run's directory: metrics.csv, summary.json, convergence.png and checkpoint.pt, each written atomically."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..report.figures import plot_convergence
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
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(result.summary, indent=2) + "\n"))
    title = f"{result.config.model} VAE, {result.config.objective} (K={result.config.samples}), " \
            f"{result.config.optimizer}, B={result.config.batch_size}"
    atomic_write(out / "convergence.png", lambda tmp: plot_convergence(result.metrics, tmp, title))
    save_checkpoint(out / "checkpoint.pt", result.model, result.optimizer, result.scheduler, result.config,
                    result.summary["steps"], result.dataset.x.shape[1])
    return out

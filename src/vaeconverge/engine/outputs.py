"""A run's tables: metrics.csv (one row per seed and checkpoint), bands.csv (mean, std and quantiles over
seeds) and summary.json, each written atomically, and read back. The figure and the whole folder are written
by ``report/run_folder.py``."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..diagnostics.seeds import BAND_KEYS, bands
from .checkpoint import atomic_write
from .recorder import METRIC_COLUMNS


def write_tables(out_dir: str | Path, metrics: list[dict[str, float]], summary: dict[str, Any]) -> Path:
    """Write metrics.csv, bands.csv and summary.json into ``out_dir``, created if needed; return the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.csv", lambda tmp: _write_csv(tmp, METRIC_COLUMNS, metrics))
    band_rows = seed_band_rows(metrics)
    atomic_write(out / "bands.csv", lambda tmp: _write_csv(tmp, list(band_rows[0]), band_rows))
    text = json.dumps(json_ready(summary), indent=2, allow_nan=False) + "\n"
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(text))
    return out


def seed_band_rows(metrics: list[dict[str, float]]) -> list[dict[str, float]]:
    """One row per checkpoint step: ``{key}_{statistic}`` over seeds for each key of ``BAND_KEYS``."""
    columns = {key: bands(metrics, key) for key in BAND_KEYS}
    steps = columns[BAND_KEYS[0]]["step"]
    return [{"step": step, **{f"{key}_{name}": series[i] for key, band in columns.items()
                              for name, series in band.items() if name != "step"}}
            for i, step in enumerate(steps)]


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, float]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


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

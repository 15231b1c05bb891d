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
from .recorder import METRIC_COLUMNS, SNR_COLUMNS


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


class RunFolderError(ValueError):
    """A folder :func:`read_run` cannot read as a run: missing, not a folder, or with its metrics.csv or
    summary.json absent, unreadable or damaged. The message names the file and what is wrong, on one line; a
    command turns it into an error for the option that named the folder."""


# The keys of summary.json a run is read back by, and what each must hold (constants: None after --no-constants).
SUMMARY_KEYS: dict[str, tuple[type, ...]] = {"config": (dict,), "steps": (int,), "data": (dict,),
                                             "constants": (dict, type(None))}
# Columns of metrics.csv a reader may find absent (written by an earlier version; read with a default).
OPTIONAL_COLUMNS = ("grad_sq_norm_se", "grad_sq_norm_biased", *SNR_COLUMNS)
_SHOWN = 40  # characters of a damaged value quoted in a message


def read_run(run_dir: str | Path) -> tuple[list[dict[str, float]], dict]:
    """The metrics rows (floats; empty cells as NaN) and the summary of a run directory, checked to be what
    ``train``, ``bbvi`` and the monitor write: raise :class:`RunFolderError` naming the file and the problem
    (nothing is written, whatever is found)."""
    run = Path(run_dir)
    if not run.exists():
        raise RunFolderError(f"{run}: no such folder")
    if not run.is_dir():
        raise RunFolderError(f"{run} is a file, not a run folder")
    absent = [name for name in ("metrics.csv", "summary.json") if not (run / name).is_file()]
    if absent:
        raise RunFolderError(f"{run}: not a run folder (no {' or '.join(absent)})")
    return _read_metrics(run / "metrics.csv"), _read_summary(run / "summary.json")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{path} is not text (byte {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise RunFolderError(f"cannot read {path} ({exc.strerror or exc})") from None


def _read_summary(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    if not text.strip():
        raise RunFolderError(f"{path} is empty")

    def refuse_constant(name: str) -> None:  # NaN, Infinity: never written (json_ready), so not a run's
        raise ValueError(f"{name} is not a JSON value")

    try:
        summary = json.loads(text, parse_constant=refuse_constant)
    except ValueError as exc:  # json.JSONDecodeError among them
        raise RunFolderError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise RunFolderError(f"{path} holds {_json_type(summary)}, not a run's summary (a JSON object)")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise RunFolderError(f"{path} lacks {', '.join(missing)} (not a run's summary, or damaged)")
    for key, types in SUMMARY_KEYS.items():
        value = summary[key]
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join(_json_type(t()) for t in types)
            raise RunFolderError(f"{path}: {key} must be {wanted} (got {_json_type(value)})")
    n = summary["data"].get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RunFolderError(f"{path}: data.n, the number of examples, must be a positive integer (got {n!r})")
    if summary["steps"] < 0:
        raise RunFolderError(f"{path}: steps must be non-negative (got {summary['steps']})")
    return summary


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_metrics(path: Path) -> list[dict[str, float]]:
    lines = _read_text(path).splitlines(keepends=True)
    if not any(line.strip() for line in lines):
        raise RunFolderError(f"{path} is empty")
    try:
        reader = csv.reader(lines)
        header = next(reader)
        records = [(reader.line_num, record) for record in reader if record]
    except csv.Error as exc:
        raise RunFolderError(f"{path} is not a readable CSV table ({exc})") from None
    missing = [column for column in METRIC_COLUMNS if column not in header and column not in OPTIONAL_COLUMNS]
    if missing:
        raise RunFolderError(f"{path} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                             "(written by another version, or damaged)")
    if len(set(header)) != len(header):
        raise RunFolderError(f"{path}: its header repeats a column")
    if not records:
        raise RunFolderError(f"{path} holds no checkpoint (a header and no rows)")
    metrics, seen = [], set()
    for line, record in records:
        if len(record) != len(header):
            raise RunFolderError(f"{path} line {line}: {len(record)} fields where the header has {len(header)}")
        row = {column: _number(path, line, column, cell) for column, cell in zip(header, record, strict=True)}
        for column in ("seed", "step"):
            if not (math.isfinite(row[column]) and row[column] >= 0 and row[column].is_integer()):
                raise RunFolderError(f"{path} line {line}: {column} must be a non-negative integer "
                                     f"(got {_shown(record[header.index(column)])})")
        if (row["seed"], row["step"]) in seen:
            raise RunFolderError(f"{path} line {line}: a second row for seed {row['seed']:.0f} at step "
                                 f"{row['step']:.0f}")
        seen.add((row["seed"], row["step"]))
        metrics.append(row)
    return metrics


def _number(path: Path, line: int, column: str, cell: str) -> float:
    """A cell as a float; empty cells (and nan, inf, written for what was not measured) as such."""
    if not cell.strip():
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise RunFolderError(f"{path} line {line}: {column} is {_shown(cell)}, not a number") from None


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")

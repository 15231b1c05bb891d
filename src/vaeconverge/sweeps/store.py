"""The result store of sweeps: one SQLite database (write-ahead log) with the sweeps, their runs and every
run's metric series. A run is identified by its configuration, so sweeps that share a configuration share
its run, trained once. Only the driver writes. A finished run is written in one transaction, its status, summary
and all its metric rows together, so a run is in the store complete or not at all, whenever the driver dies.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.outputs import json_ready
from ..engine.recorder import METRIC_COLUMNS
from .grid import Config, config_from_dict

STATUSES = ("queued", "running", "done", "failed", "diverged")
FINISHED = ("done", "failed", "diverged")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    error TEXT,
    diverged_step INTEGER,
    summary TEXT,
    queued REAL NOT NULL,
    started REAL,
    finished REAL,
    seconds REAL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL REFERENCES sweeps(name),
    run_id TEXT NOT NULL REFERENCES runs(id),
    position INTEGER NOT NULL,
    PRIMARY KEY (sweep, run_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    {", ".join(f"{column} REAL" for column in METRIC_COLUMNS)}
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (run_id, seed, step);
"""


# A store made before the unbiased squared-norm estimator lacks today's columns: opening it adds them, and its
# grad_sq_norm (the single-replicate reading) moves to grad_sq_norm_biased, so that nothing stored is mislabelled.
BIASED_ERA_NOTE = "biased: stored before the unbiased estimator (its reading is grad_sq_norm_biased); rerun to measure"


class StoreError(RuntimeError):
    """The database cannot be used (not a vaeconverge store, or corrupt)."""


@dataclass(frozen=True)
class Outcome:
    """What a worker returns for one run: ``status`` is done, failed or diverged."""

    run_id: str
    status: str
    seconds: float
    summary: dict[str, Any] | None = None
    metrics: Sequence[dict[str, float]] = ()
    error: str | None = None
    diverged_step: int | None = None


@dataclass(frozen=True)
class StoredRun:
    """One run as the store holds it."""

    id: str
    config: Config
    status: str
    error: str | None
    diverged_step: int | None
    summary: dict[str, Any] | None
    seconds: float | None


class Store:
    """A sweep database at ``path`` (created if absent)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable vaeconverge store ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """Bring a store made by an earlier version to today's metric columns, in one transaction (see
        :data:`BIASED_ERA_NOTE`); its runs stay finished, their summaries say what their readings are."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(metrics)")}
        missing = [column for column in METRIC_COLUMNS if column not in present]
        if not missing:
            return
        with self._transaction() as db:
            for column in missing:
                db.execute(f"ALTER TABLE metrics ADD COLUMN {column} REAL")
            if "grad_sq_norm_biased" in missing:
                db.execute("UPDATE metrics SET grad_sq_norm_biased = grad_sq_norm, grad_sq_norm = NULL")
                stored = list(db.execute("SELECT id, summary FROM runs WHERE summary IS NOT NULL"))
                for run_id, summary in stored:
                    values = json.loads(summary)
                    for entry in (values, *(values.get("per_seed") or [])):
                        entry["grad_sq_norm_biased"], entry["grad_sq_norm"] = entry.get("grad_sq_norm"), None
                    values["grad_sq_norm_estimator"] = BIASED_ERA_NOTE
                    db.execute("UPDATE runs SET summary = ? WHERE id = ?", (json.dumps(values), run_id))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def add_sweep(self, name: str, spec: str, runs: Sequence[tuple[str, Config]]) -> None:
        """Register a sweep and queue those of its runs the store does not hold yet; runs a previous driver
        left running (it was killed) are queued again."""
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT INTO sweeps (name, spec, created) VALUES (?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec", (name, spec, now))
            db.executemany("INSERT OR IGNORE INTO runs (id, config, status, queued) VALUES (?, ?, 'queued', ?)",
                           [(run_id, json.dumps(config.to_dict()), now) for run_id, config in runs])
            db.execute("DELETE FROM sweep_runs WHERE sweep = ?", (name,))
            db.executemany("INSERT INTO sweep_runs (sweep, run_id, position) VALUES (?, ?, ?)",
                           [(name, run_id, i) for i, (run_id, _) in enumerate(runs)])
            db.execute("UPDATE runs SET status = 'queued', started = NULL WHERE status = 'running'")

    def requeue_failed(self, sweep: str) -> int:
        """Queue the sweep's failed runs again; returns how many."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE runs SET status = 'queued', error = NULL, started = NULL, finished = NULL, seconds = NULL "
                "WHERE status = 'failed' AND id IN (SELECT run_id FROM sweep_runs WHERE sweep = ?)", (sweep,),
            ).rowcount

    def pending(self, sweep: str) -> list[tuple[str, Config]]:
        """The sweep's queued runs, in its order."""
        rows = self._db.execute(
            "SELECT id, config FROM runs JOIN sweep_runs ON run_id = id WHERE sweep = ? AND status = 'queued' "
            "ORDER BY position", (sweep,))
        return [(run_id, config_from_dict(json.loads(config))) for run_id, config in rows]

    def mark_running(self, run_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET status = 'running', started = ? WHERE id = ?", (time.time(), run_id))

    def record(self, outcome: Outcome) -> None:
        """Write a finished run: its status and summary and all its metric rows, in one transaction."""
        summary = None if outcome.summary is None else json.dumps(json_ready(outcome.summary), allow_nan=False)
        with self._transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ?", (outcome.run_id,))
            db.execute(
                "UPDATE runs SET status = ?, error = ?, diverged_step = ?, summary = ?, finished = ?, seconds = ? "
                "WHERE id = ?",
                (outcome.status, outcome.error, outcome.diverged_step, summary, time.time(), outcome.seconds,
                 outcome.run_id),
            )
            db.executemany(
                f"INSERT INTO metrics (run_id, {', '.join(METRIC_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(METRIC_COLUMNS))})",
                [(outcome.run_id, *(row[column] for column in METRIC_COLUMNS)) for row in outcome.metrics],
            )

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        """Number of runs in each status (every status present, zeros included)."""
        where, args = ("WHERE id IN (SELECT run_id FROM sweep_runs WHERE sweep = ?)", (sweep,)) if sweep else ("", ())
        found = dict(self._db.execute(f"SELECT status, COUNT(*) FROM runs {where} GROUP BY status", args))
        return {status: found.get(status, 0) for status in STATUSES}

    def sweeps(self) -> list[tuple[str, str]]:
        """(name, TOML text) of every sweep, in the order they were first added."""
        return list(self._db.execute("SELECT name, spec FROM sweeps ORDER BY created, name"))

    def runs(self, sweep: str) -> list[StoredRun]:
        """The sweep's runs, in its order."""
        rows = self._db.execute(
            "SELECT id, config, status, error, diverged_step, summary, seconds FROM runs JOIN sweep_runs "
            "ON run_id = id WHERE sweep = ? ORDER BY position", (sweep,))
        return [StoredRun(run_id, config_from_dict(json.loads(config)), status, error, step,
                          None if summary is None else json.loads(summary), seconds)
                for run_id, config, status, error, step, summary, seconds in rows]

    def metrics(self, run_id: str) -> list[dict[str, float]]:
        """A run's metric rows, ordered by seed and step (NULLs, stored for NaN, read back as NaN)."""
        rows = self._db.execute(
            f"SELECT {', '.join(METRIC_COLUMNS)} FROM metrics WHERE run_id = ? ORDER BY seed, step", (run_id,))
        return [{column: float("nan") if value is None else value for column, value in zip(METRIC_COLUMNS, row,
                                                                                            strict=True)}
                for row in rows]

"""The result store of sweeps: one SQLite database (write-ahead log) with the sweeps, their runs and every
run's metric series. A run is identified by its configuration, so sweeps that share a configuration share
its run, trained once. Only the driver writes. A finished run is written in one transaction, its status, summary
and all its metric rows together, so a run is in the store complete or not at all, whenever the driver dies.

One writer at a time: a writing :class:`Store` holds an exclusive advisory lock (``flock``) on the sibling file
``<store>.lock`` for its whole life, with its pid written in it; the lock dies with its holder. Reading commands
open the store read-only (``Store(path, readonly=True)``): nothing of the file is changed, not even its journal
mode, and a store in a read-only folder can still be read. A file that is not a vaeconverge store, or a damaged
one, is a :class:`StoreError` naming the file, never an sqlite3 traceback.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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


# The columns every vaeconverge store has had (the metric columns beyond run_id came and went by version).
_TABLES = {
    "sweeps": {"name", "spec", "created"},
    "runs": {"id", "config", "status", "error", "diverged_step", "summary", "queued", "started", "finished",
             "seconds"},
    "sweep_runs": {"sweep", "run_id", "position"},
    "metrics": {"run_id", "seed", "step"},
}


class StoreError(RuntimeError):
    """The database cannot be used (not a vaeconverge store, or corrupt, or another driver holds it)."""


def _relabel_biased(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary stored before the unbiased estimator, its reading under its own name (:data:`BIASED_ERA_NOTE`)."""
    for entry in (summary, *(summary.get("per_seed") or [])):
        entry["grad_sq_norm_biased"], entry["grad_sq_norm"] = entry.get("grad_sq_norm"), None
    summary["grad_sq_norm_estimator"] = BIASED_ERA_NOTE
    return summary


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """The store's own errors (a damaged file) as one :class:`StoreError` naming the file."""
    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # the caller's mistake, not the file's
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.path}: not a usable vaeconverge store ({exc})") from None
    return wrapper  # type: ignore[return-value]


class _WriterLock:
    """The exclusive advisory lock of the one driver writing the store at ``path``: ``flock`` on ``<path>.lock``
    (opened without following a symbolic link), held until :meth:`release` or the process's end, with the
    holder's pid in the file; a second writer gets a :class:`StoreError` naming that pid, at once."""

    def __init__(self, store: Path) -> None:
        self.path = store.with_name(store.name + ".lock")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                why = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
                raise StoreError(f"{store}: cannot open its lock file {self.path} ({why})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise StoreError(f"{store}: another sweep driver (pid {holder}) is writing it (it holds "
                                 f"{self.path}); wait for it to end, or stop it") from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the file may have been removed by the holder we waited on: lock the one at the path
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd: int | None = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def __del__(self) -> None:  # a store dropped unclosed (an error on its way out) lets go of the lock
        self.release()

    def release(self) -> None:
        if getattr(self, "_fd", None) is None:
            return
        fd, self._fd = self._fd, None
        with suppress(OSError):
            os.unlink(self.path)  # while still held, so that no one locks a file about to vanish
        os.close(fd)


def _read_pid(fd: int) -> str:
    """The pid a lock file holds ("unknown" while its holder has yet to write it)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


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
    """A sweep database at ``path``: for writing (created if absent; the one driver, holding the writer's lock),
    or ``readonly`` (the file must be a vaeconverge store; nothing of it changes)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._db: sqlite3.Connection | None = None
        self._lock: _WriterLock | None = None
        self._missing: tuple[str, ...] = ()  # metric columns a read-only store from an earlier version lacks
        try:
            if readonly:
                self._db = self._connect_readonly()
                self._missing = self._check_schema(require=True)
            else:
                self._lock = _WriterLock(self.path)
                self._db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
                self._check_schema(require=False)  # before anything is written: a foreign file stays as it was
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._check_integrity()
                self._db.executescript(_SCHEMA)
                self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"{self.path}: not a usable vaeconverge store ({exc})") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._lock is not None:
            self._lock.release()

    def _connect_readonly(self) -> sqlite3.Connection:
        """The file opened read-only; in a folder this process cannot write (where SQLite cannot make a WAL
        store's shared-memory file), as immutable, provided no write-ahead log holds committed runs."""
        target = urllib.parse.quote(str(self.path.resolve()))
        db = sqlite3.connect(f"file:{target}?mode=ro", uri=True, isolation_level=None)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            folder = self.path.resolve().parent
            wal = self.path.with_name(self.path.name + "-wal")
            if os.access(folder, os.W_OK) or (wal.exists() and wal.stat().st_size > 0):
                raise
        db = sqlite3.connect(f"file:{target}?mode=ro&immutable=1", uri=True, isolation_level=None)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db

    def _check_schema(self, require: bool) -> tuple[str, ...]:
        """Refuse a database that is not a vaeconverge store (an empty one is, for writing, a new store);
        returns the metric columns it lacks (those of a store made by an earlier version)."""
        assert self._db is not None
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and not require:
            return ()
        absent = sorted(set(_TABLES) - tables)
        if absent:
            raise StoreError(f"{self.path}: not a vaeconverge store (it has no {', '.join(absent)} table"
                             f"{'s' if len(absent) > 1 else ''})")
        for table, needed in _TABLES.items():
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if not needed <= present:
                raise StoreError(f"{self.path}: not a vaeconverge store (its {table} table lacks "
                                 f"{', '.join(sorted(needed - present))})")
        present = {row[1] for row in self._db.execute("PRAGMA table_info(metrics)")}
        return tuple(column for column in METRIC_COLUMNS if column not in present)

    def _check_integrity(self) -> None:
        """Refuse a damaged store before a sweep spends hours training into it."""
        assert self._db is not None
        problems = [line.strip() for (row,) in self._db.execute("PRAGMA quick_check(1)") for line in row.splitlines()]
        if problems != ["ok"]:
            raise StoreError(f"{self.path}: not a usable vaeconverge store (damaged: {problems[0]})")

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
                    values = _relabel_biased(json.loads(summary))
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

    @_guarded
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

    @_guarded
    def requeue_failed(self, sweep: str) -> int:
        """Queue the sweep's failed runs again; returns how many."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE runs SET status = 'queued', error = NULL, started = NULL, finished = NULL, seconds = NULL "
                "WHERE status = 'failed' AND id IN (SELECT run_id FROM sweep_runs WHERE sweep = ?)", (sweep,),
            ).rowcount

    @_guarded
    def requeue_running(self) -> int:
        """Queue again the runs marked running (this driver, the one writer, was interrupted while they ran:
        nothing of them is finished); returns how many."""
        with self._transaction() as db:
            return db.execute("UPDATE runs SET status = 'queued', started = NULL WHERE status = 'running'").rowcount

    @_guarded
    def pending(self, sweep: str) -> list[tuple[str, Config]]:
        """The sweep's queued runs, in its order."""
        rows = self._db.execute(
            "SELECT id, config FROM runs JOIN sweep_runs ON run_id = id WHERE sweep = ? AND status = 'queued' "
            "ORDER BY position", (sweep,))
        return [(run_id, config_from_dict(json.loads(config))) for run_id, config in rows]

    @_guarded
    def mark_running(self, run_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET status = 'running', started = ? WHERE id = ?", (time.time(), run_id))

    @_guarded
    def record(self, outcome: Outcome) -> None:
        """Write a finished run: its status and summary and all its metric rows, in one transaction. A run cut
        short (its summary says ``interrupted``) is not finished, and is refused."""
        if outcome.summary is not None and outcome.summary.get("interrupted"):
            raise ValueError(f"run {outcome.run_id} was interrupted: it is not finished, and is not stored")
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

    @_guarded
    def counts(self, sweep: str | None = None) -> dict[str, int]:
        """Number of runs in each status (every status present, zeros included)."""
        where, args = ("WHERE id IN (SELECT run_id FROM sweep_runs WHERE sweep = ?)", (sweep,)) if sweep else ("", ())
        found = dict(self._db.execute(f"SELECT status, COUNT(*) FROM runs {where} GROUP BY status", args))
        return {status: found.get(status, 0) for status in STATUSES}

    @_guarded
    def sweeps(self) -> list[tuple[str, str]]:
        """(name, TOML text) of every sweep, in the order they were first added."""
        return list(self._db.execute("SELECT name, spec FROM sweeps ORDER BY created, name"))

    @_guarded
    def runs(self, sweep: str) -> list[StoredRun]:
        """The sweep's runs, in its order."""
        rows = self._db.execute(
            "SELECT id, config, status, error, diverged_step, summary, seconds FROM runs JOIN sweep_runs "
            "ON run_id = id WHERE sweep = ? ORDER BY position", (sweep,))
        return [StoredRun(run_id, config_from_dict(json.loads(config)), status, error, step,
                          None if summary is None else self._summary(json.loads(summary)), seconds)
                for run_id, config, status, error, step, summary, seconds in rows]

    def _summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A stored summary as today's version labels it (a read-only store is not migrated on disk)."""
        return _relabel_biased(summary) if "grad_sq_norm_biased" in self._missing else summary

    @_guarded
    def metrics(self, run_id: str) -> list[dict[str, float]]:
        """A run's metric rows, ordered by seed and step (NULLs, stored for NaN, read back as NaN)."""
        columns = [column for column in METRIC_COLUMNS if column not in self._missing]
        rows = self._db.execute(
            f"SELECT {', '.join(columns)} FROM metrics WHERE run_id = ? ORDER BY seed, step", (run_id,))
        result = []
        for row in rows:
            values = dict.fromkeys(METRIC_COLUMNS, None) | dict(zip(columns, row, strict=True))
            if "grad_sq_norm_biased" in self._missing:  # as the migration of a writing open would label it
                values["grad_sq_norm_biased"], values["grad_sq_norm"] = values["grad_sq_norm"], None
            result.append({column: float("nan") if value is None else value for column, value in values.items()})
        return result

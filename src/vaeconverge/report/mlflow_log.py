"""Runs logged to MLflow (``train --mlflow URI``, ``sweep --mlflow URI``), when mlflow is installed
(``pip install 'vaeconverge[mlflow]'``); the module is not named ``mlflow`` so that it never shadows the package.

A ``train`` run of several seeds is one MLflow run with one nested run per seed: every seed's series then has
the same metric names (``grad_sq_norm``...), which MLflow overlays across runs, and the parent holds the seeds'
mean under those names beside the summary's readings, so that parents compare with each other (and with
one-seed runs, which log their seed's series directly) whatever their number of seeds. With a ``sqlite:///``
URI, artifacts go into ``mlartifacts/`` beside the database, never into MLflow's default ``./mlruns``."""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from ..diagnostics.seeds import by_seed
from .run_folder import check_output_folder
from .scalars import final_readings, run_curve, scalars

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ..sweeps import Outcome
    from ..sweeps.grid import Config, SweepSpec

INSTALL = "pip install 'vaeconverge[mlflow]'"
SCHEMES = ("sqlite", "http", "https", "databricks")  # stores whose artifacts have a place we know
ARTIFACTS = "mlartifacts"  # beside a SQLite database
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}  # in every MLflow database
TRAIN_EXPERIMENT = "vaeconverge train"
FIGURES = ("convergence.png", "summary.json")  # a train run's files logged as artifacts
PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # MLflow's limits on one log_batch call


def require_mlflow() -> None:
    """Raise :class:`ConfigError` naming ``--mlflow`` unless the mlflow package can be imported."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("--mlflow", f"needs the mlflow package, which is not installed ({INSTALL})")


class Tracking:
    """An MLflow experiment at a tracking URI, opened (and checked) before any training by :func:`open_tracking`."""

    def __init__(self, client: MlflowClient, experiment_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id

    def log_train(self, config: Mapping[str, Any], metrics: Sequence[dict[str, float]], summary: Mapping[str, Any],
                  out: Path) -> str:
        """Log a ``train`` run written into ``out``: its configuration as params, its series per checkpoint, its
        readings, and its figure and summary as artifacts; return the (parent) run's id."""
        parent = self._log(out.name, config, run_curve(metrics), summary, {"vaeconverge.out": str(out.absolute())})
        seeds = by_seed(metrics)
        if len(seeds) > 1:
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

            for seed, rows in seeds.items():
                child = self._log(f"seed-{seed}", {"seed": seed}, rows, None, {MLFLOW_PARENT_RUN_ID: parent})
                self.client.set_terminated(child, "FINISHED")
        for name in FIGURES:
            if (out / name).is_file():
                self.client.log_artifact(parent, str(out / name))
        self.client.set_terminated(parent, "KILLED" if summary.get("interrupted") else "FINISHED")
        return parent

    def sweep_logger(self, spec: SweepSpec) -> Callable[[Config, Outcome], None]:
        """A callback ``(config, outcome)`` for ``run_sweep``: each finished run of ``spec`` as an MLflow run named
        by its axes' values, with its configuration, its curve and its readings."""

        def log(config: Config, outcome: Outcome) -> None:
            run = self._log(spec.label(config), config.to_dict(), run_curve(outcome.metrics), outcome.summary,
                            {"vaeconverge.sweep": spec.name, "vaeconverge.run_id": outcome.run_id})
            self.client.set_terminated(run, "FINISHED")

        return log

    def _log(self, name: str, params: Mapping[str, Any], rows: Sequence[dict[str, float]],
             summary: Mapping[str, Any] | None, tags: dict[str, str]) -> str:
        """Create a run named ``name`` holding ``params`` (flattened), ``rows``' scalars at their steps and, given a
        summary, its readings at the last step; return its id (the run is left open)."""
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        stamp = int(time.time() * 1000)
        points = [Metric(key, value, stamp, int(row["step"])) for row in rows for key, value in scalars(row).items()]
        if summary is not None:
            last = int(rows[-1]["step"])
            points += [Metric(key, value, stamp, last) for key, value in final_readings(summary).items()]
        flat = [Param(key, value) for key, value in flat_params(params).items()]
        for start in range(0, len(flat), PARAMS_PER_CALL):
            self.client.log_batch(run, params=flat[start:start + PARAMS_PER_CALL])
        for start in range(0, len(points), METRICS_PER_CALL):
            self.client.log_batch(run, metrics=points[start:start + METRICS_PER_CALL])
        return run


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A configuration as MLflow params: nested tables as ``table.key``, every value as its text."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = str(value)
    return flat


def artifact_location(uri: str) -> str | None:
    """Where a new experiment's artifacts go: ``mlartifacts/`` beside a SQLite database (whose folder is created);
    None where the store or its server decides. A URI that names no database file or a file MLflow cannot use, or
    whose store would put artifacts into the current folder, is a :class:`ConfigError`."""
    scheme = uri.partition(":")[0].lower() if ":" in uri else ""
    if scheme not in SCHEMES:
        raise ConfigError("--mlflow", f"expected a tracking URI such as sqlite:///mlruns.db or http://HOST:5000 "
                                      f"(got {uri!r})")
    if scheme != "sqlite":
        return None
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if not path or path.startswith(":memory:"):
        raise ConfigError("--mlflow", f"{uri!r} names no database file; write sqlite:///PATH")
    database = Path(path.partition("?")[0])
    _check_database(database)
    check_output_folder(database.parent, "--mlflow", holds_runs=False)
    database.parent.mkdir(parents=True, exist_ok=True)
    return (database.parent / ARTIFACTS).absolute().as_uri()


def _check_database(database: Path) -> None:
    """Refuse a file MLflow would fail on or change: not a SQLite database, or one holding other tables than
    MLflow's (such as a sweep's result store, into which MLflow would add its own)."""
    if database.exists() and not database.is_file():
        raise ConfigError("--mlflow", f"{database} exists and is not a file")
    if not database.exists() or database.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(f"{database.absolute().as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        raise ConfigError("--mlflow", f"{database} is not a SQLite database") from None
    if tables and MLFLOW_TABLES - tables:
        raise ConfigError("--mlflow", f"{database} is a database of something other than MLflow; name another file")


def open_tracking(uri: str, experiment: str = TRAIN_EXPERIMENT) -> Tracking:
    """Connect to the tracking store at ``uri`` and find or create ``experiment`` (with its artifacts placed by
    :func:`artifact_location`); any failure is a :class:`ConfigError` naming ``--mlflow``, before training."""
    require_mlflow()
    location = artifact_location(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    notes = logging.getLogger("mlflow.store.db.utils")  # that it creates a new database's tables
    level = notes.level
    notes.setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None
                         else client.create_experiment(experiment, artifact_location=location))
    except MlflowException as exc:
        raise ConfigError("--mlflow", f"cannot use {uri}: {str(exc).splitlines()[0]}") from None
    finally:
        notes.setLevel(level)
    return Tracking(client, experiment_id)

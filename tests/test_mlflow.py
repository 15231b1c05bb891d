"""``train --mlflow`` and ``sweep --mlflow`` against a local SQLite store in tmp_path (no server), read back with
MlflowClient: params equal the configuration, each series has one point per checkpoint equal to metrics.csv, the
readings equal the summary, the figure is an artifact beside the database, and nothing lands in the current
folder."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import tiny_sweep

from vaeconverge.cli import main
from vaeconverge.report.mlflow_log import artifact_location, open_tracking
from vaeconverge.report.scalars import SCALARS
from vaeconverge.sweeps import Store

pytest.importorskip("mlflow")
from mlflow import MlflowClient

TINY = ["--hidden", "8", "--depth", "1", "--latent-dim", "2", "--steps", "20", "--eval-every", "10",
        "--no-constants", "--quiet"]
SWEEP = tiny_sweep(20, 10, "batch_size = [16, 32]\n")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """An MLflow database with its tables, created once: MLflow's migrations are slow, a copy is not."""
    db = tmp_path_factory.mktemp("template") / "runs.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def db(tmp_path, template):
    """A copy of the template in its own folder, which MLflow's artifacts must not leave."""
    path = tmp_path / "tracking" / "runs.db"
    path.parent.mkdir()
    shutil.copy(template, path)
    return path


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty current folder, which MLflow must leave empty."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def expected_params(config: dict) -> dict[str, str]:
    """summary.json's configuration as text, its one nested table (synthetic) as ``synthetic.KEY``."""
    params = {key: str(value) for key, value in config.items() if key != "synthetic"}
    return params | {f"synthetic.{key}": str(value) for key, value in config["synthetic"].items()}


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_train_logs_a_parent_with_the_seed_mean_and_one_nested_run_per_seed(tmp_path, cwd, db):
    out = tmp_path / "run"
    uri = f"sqlite:///{db}"
    assert main(["train", *TINY, "--seeds", "2", "--out", str(out), "--mlflow", uri]) == 0
    assert list(cwd.iterdir()) == []

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vaeconverge train")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {int(r.data.params["seed"]): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == [0, 1] and len(runs) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}

    summary = json.loads((out / "summary.json").read_text())
    assert parent.data.params == expected_params(summary["config"])
    assert parent.data.tags["vaeconverge.out"] == str(out)
    with (out / "metrics.csv").open(newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    for seed, child in children.items():  # every column metrics.csv holds a number in, at the steps it does
        mine = [r for r in rows if r["seed"] == seed]
        columns = [c for c in mine[0] if c not in ("seed", "step") and any(math.isfinite(r[c]) for r in mine)]
        assert {"objective", "grad_sq_norm", "lr", "kl"} <= set(columns) == set(child.data.metrics)
        for column in columns:
            assert history(client, child.info.run_id, column) == [
                (int(r["step"]), r[column]) for r in mine if math.isfinite(r[column])]
    for column in ("grad_sq_norm", "objective"):
        mean = [(step, sum(r[column] for r in rows if r["step"] == step) / 2) for step in (0, 10, 20)]
        logged = history(client, parent.info.run_id, column)
        assert [s for s, _ in logged] == [0, 10, 20]
        assert [v for _, v in logged] == pytest.approx([v for _, v in mean], rel=1e-12)
    assert parent.data.metrics["summary/grad_sq_norm"] == summary["grad_sq_norm"]
    assert parent.data.metrics["summary/objective"] == summary["objective"]

    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["convergence.png", "summary.json"]
    (figure,) = (db.parent / "mlartifacts").rglob("convergence.png")
    assert figure.read_bytes() == (out / "convergence.png").read_bytes()
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlartifacts", "runs.db"]


def test_a_one_seed_run_is_one_mlflow_run_holding_its_series(tmp_path, cwd, db):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--mlflow", f"sqlite:///{db}"]) == 0
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("vaeconverge train").experiment_id])
    with (out / "metrics.csv").open(newline="") as handle:
        expected = [(int(r["step"]), float(r["grad_sq_norm"])) for r in csv.DictReader(handle)]
    assert history(client, run.info.run_id, "grad_sq_norm") == expected
    assert list(cwd.iterdir()) == []


def test_sweep_logs_each_finished_run_in_an_experiment_named_after_the_sweep(tmp_path, cwd, db):
    spec, store = tmp_path / "tiny.toml", tmp_path / "r.db"
    spec.write_text(SWEEP)
    assert main(["sweep", str(spec), "--store", str(store), "--jobs", "1", "--quiet", "--mlflow",
                 f"sqlite:///{db}"]) == 0
    client = MlflowClient(f"sqlite:///{db}")
    logged = {r.data.tags["vaeconverge.run_id"]: r for r in
              client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    with Store(store, readonly=True) as results:
        stored = results.runs("tiny")
        assert sorted(logged) == sorted(run.id for run in stored)
        for run in stored:
            mlflow_run = logged[run.id]
            assert mlflow_run.info.run_name == f"batch_size={run.config.batch_size}"
            assert mlflow_run.data.params == expected_params(run.config.to_dict())
            assert mlflow_run.data.metrics["summary/grad_sq_norm"] == run.summary["grad_sq_norm"]
            assert history(client, mlflow_run.info.run_id, "objective") == [
                (int(r["step"]), r["objective"]) for r in results.metrics(run.id)]
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(("uri", "problem"), [
    ("runs.db", "expected a tracking URI"),
    ("sqlite://", "names no database file"),
    ("postgresql://host/db", "expected a tracking URI"),
])
def test_a_bad_uri_is_one_line_before_training(tmp_path, cwd, capsys, uri, problem):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--mlflow", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --mlflow: " in err and problem in err
    assert not out.exists() and list(cwd.iterdir()) == []


def test_without_the_package_train_is_refused_before_training(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--mlflow", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "--mlflow: needs the mlflow package, which is not installed (pip install 'vaeconverge[mlflow]')" in (
        capsys.readouterr().err)
    assert not out.exists() and not (tmp_path / "m.db").exists()


def test_artifacts_go_beside_the_database_whose_folder_is_created(tmp_path, cwd):
    database = tmp_path / "new" / "sub" / "runs.db"
    assert artifact_location(f"sqlite:///{database}") == (database.parent / "mlartifacts").as_uri()
    assert database.parent.is_dir() and list(database.parent.iterdir()) == []
    assert artifact_location("sqlite:///here/runs.db") == (cwd / "here" / "mlartifacts").as_uri()
    assert artifact_location("http://localhost:5000") is None  # the server places them


@pytest.mark.parametrize(("content", "problem"), [
    (b"not a database, " * 100, "is not a SQLite database"),
    ((Path(__file__).parent / "fixtures" / "store-v1.db").read_bytes(), "something other than MLflow"),  # a sweep's
])
def test_a_file_mlflow_cannot_use_or_would_change_is_refused_and_kept(tmp_path, capsys, content, problem):
    database, out = tmp_path / "r.db", tmp_path / "run"
    database.write_bytes(content)
    assert main(["train", *TINY, "--out", str(out), "--mlflow", f"sqlite:///{database}"]) == 2
    assert problem in capsys.readouterr().err
    assert database.read_bytes() == content and not out.exists()


def test_more_points_and_params_than_one_mlflow_call_takes_are_all_logged(tmp_path, db):
    """MLflow takes at most 100 params and 1000 metric points a call: a run beyond both keeps every one."""
    tracking = open_tracking(f"sqlite:///{db}", "large")
    config = {f"option{i}": i for i in range(150)}
    metrics = [{"seed": seed, "step": step, **dict.fromkeys(SCALARS, step + seed / 2)}
               for seed in (0, 1) for step in range(300)]
    (tmp_path / "run").mkdir()
    parent = tracking.log_train(config, metrics, {"grad_sq_norm": 2.0, "interrupted": True}, tmp_path / "run")
    client = MlflowClient(f"sqlite:///{db}")
    run = client.get_run(parent)
    assert run.data.params == {key: str(value) for key, value in config.items()}
    assert run.info.status == "KILLED" and run.data.metrics["summary/grad_sq_norm"] == 2.0
    assert history(client, parent, SCALARS[-1]) == [(step, step + 0.25) for step in range(300)]
    (child,) = client.search_runs([run.info.experiment_id], "params.seed = '1'")
    assert history(client, child.info.run_id, "objective") == [(step, step + 0.5) for step in range(300)]

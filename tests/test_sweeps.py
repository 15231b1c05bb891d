"""Sweeps: TOML specifications with clear errors, the SQLite store's all-or-nothing runs, divergence and
failure recorded without stopping the sweep, and resumption after the driver is killed with SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaeconverge.cli import main
from vaeconverge.config import RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.engine import train
from vaeconverge.engine.recorder import METRIC_COLUMNS
from vaeconverge.sweeps import (
    InProcess,
    Outcome,
    ProcessPool,
    SpecError,
    Store,
    load_spec,
    parse_spec,
    run_id,
    run_sweep,
)

SMALL = """
name = "small"
seeds = 2
[base]
data = "digits"
hidden = 8
depth = 1
latent-dim = 2
steps = 30
eval_every = 10
constants = false
"""
# Soft-clipped networks have bounded outputs, so their objective stays finite even at lr 1e8: runs that must
# diverge use ReLU.
RELU = SMALL.replace("depth = 1", 'depth = 1\nactivation = "relu"')


def test_grid_and_zipped_axes_expand_in_order_with_stable_ids():
    spec = parse_spec(SMALL + '[grid]\nbatch_size = [16, 32]\n[zip]\noptimizer = ["sgd", "adam"]\nlr = [0.05, 1e-3]\n')
    runs = spec.runs()
    assert [(c.batch_size, c.optimizer, c.lr) for c in runs] == [
        (16, "sgd", 0.05), (16, "adam", 1e-3), (32, "sgd", 0.05), (32, "adam", 1e-3)]
    assert all(c.seeds == (0, 1) and c.hidden == 8 for c in runs)
    reordered = parse_spec(SMALL.replace("hidden = 8\ndepth = 1", "depth = 1\nhidden = 8")
                           + '[zip]\nlr = [0.05, 1e-3]\noptimizer = ["sgd", "adam"]\n[grid]\nbatch_size = [16, 32]\n')
    assert sorted(map(run_id, reordered.runs())) == sorted(map(run_id, runs))
    assert len(set(map(run_id, runs))) == 4
    assert run_id(runs[0]) == run_id(RunConfig.from_dict(runs[0].to_dict() | {"threads": 1}))  # execution only


@pytest.mark.parametrize(("text", "where", "problem"), [
    (SMALL.replace("steps = 30", "steps = = 30"), "<spec>", "line 9"),
    (SMALL + "[grid]\nbatchsize = [16]\n", "grid.batchsize", "did you mean 'batch_size'"),
    (SMALL + "[grid]\nbatch_size = []\n", "grid.batch_size", "empty axis"),
    (SMALL + "[grid]\nbatch_size = 16\n", "grid.batch_size", "list of values"),
    (SMALL + "[zip]\nlr = [0.1, 0.2]\nsamples = [1]\n", "zip", "equal lengths"),
    (SMALL + "[grid]\nbatch_size = [16, -1]\n", "run batch_size=-1", "--batch-size: must be positive"),
    (SMALL + "[axes]\nlr = [1]\n", "axes", "unknown key"),
    (SMALL.replace("steps = 30", "stepz = 30"), "base.stepz", "did you mean 'steps'"),
])
def test_bad_specs_name_the_line_or_key(text, where, problem):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert where in info.value.where and problem in info.value.problem


def test_a_missing_spec_file_is_a_clear_error(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.toml"), "--store", str(tmp_path / "r.db"), "--quiet"]) == 2
    assert "cannot read the sweep file" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


def test_a_run_is_stored_complete_or_not_at_all(tmp_path):
    config = RunConfig()
    with Store(tmp_path / "r.db") as store:
        store.add_sweep("s", "", [("a", config)])
        rows = [{"seed": 0, "step": 0} | dict.fromkeys(("epoch", "lr", "objective", "grad_sq_norm"), 1.0)]
        with pytest.raises(KeyError):  # a row lacking columns fails inside the transaction
            store.record(Outcome("a", "done", 1.0, summary={}, metrics=rows))
        assert store.counts("s")["queued"] == 1 and store.metrics("a") == []
        full = [dict.fromkeys(METRIC_COLUMNS, 1.0) | {"bound": math.nan}]
        store.record(Outcome("a", "done", 1.0, summary={"x": math.nan}, metrics=full))
        assert store.counts("s")["done"] == 1
        (stored,) = store.metrics("a")
        assert math.isnan(stored["bound"]) and stored["objective"] == 1.0
        assert store.runs("s")[0].summary == {"x": None}


def test_a_sweep_records_divergence_and_failure_and_finishes_the_rest(tmp_path):
    """SGD at lr 1e8 diverges; a run whose data file is missing fails; the other run finishes, and its stored
    series equal `vaeconverge train`'s on the same configuration."""
    spec = parse_spec(RELU + '[zip]\noptimizer = ["adam", "sgd", "adam"]\nlr = [1e-3, 1e8, 1e-3]\n'
                      f'data = ["digits", "digits", "{tmp_path / "gone.npy"}"]\n')
    with Store(tmp_path / "r.db") as store:
        counts = run_sweep(spec, store, InProcess(), progress=False)
        assert counts == {"queued": 0, "running": 0, "done": 1, "failed": 1, "diverged": 1}
        done, diverged, failed = store.runs("small")
        assert diverged.status == "diverged" and diverged.diverged_step in (10, 20, 30)
        assert failed.status == "failed" and "gone.npy" in failed.error
        alone = train(done.config, load_dataset(done.config), progress=False)
        stored = store.metrics(done.id)
        assert len(stored) == len(alone.metrics) == 2 * 4  # 2 seeds x checkpoints 0, 10, 20, 30
        key = lambda row: (row["seed"], row["step"])  # noqa: E731
        for mine, theirs in zip(sorted(stored, key=key), sorted(alone.metrics, key=key), strict=True):
            assert mine["grad_sq_norm"] == pytest.approx(theirs["grad_sq_norm"], rel=1e-6)
        assert done.summary["grad_sq_norm"] == pytest.approx(alone.summary["grad_sq_norm"], rel=1e-6)


def test_a_process_pool_stores_what_the_driver_alone_stores(tmp_path):
    spec = parse_spec(SMALL + "[grid]\nbatch_size = [16, 32]\n")
    results = {}
    for name, executor in (("inline", InProcess()), ("pool", ProcessPool(2))):
        with Store(tmp_path / f"{name}.db") as store:
            assert run_sweep(spec, store, executor, progress=False)["done"] == 2
            results[name] = {run.id: store.metrics(run.id) for run in store.runs("small")}
    assert results["inline"].keys() == results["pool"].keys()
    def numbers(row: dict[str, float]) -> dict[str, float | None]:
        return {k: None if math.isnan(v) else v for k, v in row.items() if k != "seconds"}

    for identifier, rows in results["inline"].items():
        assert [numbers(row) for row in rows] == [numbers(row) for row in results["pool"][identifier]]


def _finished(db: Path) -> dict[str, float]:
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT id, finished FROM runs WHERE status = 'done'"))


def _finished_so_far(db: Path) -> dict[str, float]:
    """:func:`_finished` of a store that a running driver may not have created, or given its tables, yet."""
    try:
        return _finished(db) if db.exists() else {}
    except sqlite3.OperationalError:  # no such table yet, or the driver holds its write lock
        return {}


def test_a_sweep_killed_with_sigkill_resumes_without_losing_or_repeating_a_run(tmp_path):
    spec_path = tmp_path / "kill.toml"
    spec_path.write_text(SMALL.replace("steps = 30", "steps = 400").replace("seeds = 2", "seeds = 1")
                         + "[grid]\nlr = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3]\n")
    db = tmp_path / "r.db"
    command = [sys.executable, "-m", "vaeconverge", "sweep", str(spec_path), "--store", str(db), "--jobs", "1",
               "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_finished_so_far(db)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
    finally:
        driver.kill()
    before = _finished(db)
    assert 2 <= len(before) < 6, "the driver was to be killed mid-sweep"

    assert main(["sweep", str(spec_path), "--store", str(db), "--jobs", "1", "--quiet"]) == 0
    after = _finished(db)
    assert len(after) == 6
    assert all(after[run] == finished for run, finished in before.items())  # kept, not run again
    with Store(db) as store:
        assert store.counts() == {"queued": 0, "running": 0, "done": 6, "failed": 0, "diverged": 0}
        for run in store.runs("kill"):
            assert [row["step"] for row in store.metrics(run.id)] == list(range(0, 401, 10))


def test_sweep_status_counts_runs(tmp_path, capsys):
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(RELU.replace('data = "digits"', 'data = "digits"\noptimizer = "sgd"')
                         + "[grid]\nlr = [0.01, 1e8]\n")
    db = tmp_path / "r.db"
    assert main(["sweep", str(spec_path), "--store", str(db), "--jobs", "1", "--quiet"]) == 1  # one diverged
    capsys.readouterr()
    assert main(["sweep", "status", str(db), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["sweeps"]["small"] == {"queued": 0, "running": 0, "done": 1, "failed": 0, "diverged": 1}
    assert main(["sweep", "status", str(tmp_path / "none.db")]) == 2
    assert "no store" in capsys.readouterr().err


def test_a_corrupt_store_is_a_clear_error_and_is_left_as_it_was(tmp_path, capsys):
    db = tmp_path / "r.db"
    db.write_bytes(b"not a database, " * 100)
    assert main(["sweep", "status", str(db)]) == 2
    assert "not a usable vaeconverge store" in capsys.readouterr().err
    assert db.read_bytes() == b"not a database, " * 100


def test_load_spec_reads_a_file(tmp_path):
    path = tmp_path / "named-by-file.toml"
    path.write_text(SMALL.replace('name = "small"\n', ""))
    assert load_spec(path).name == "named-by-file"


def test_the_report_is_rebuilt_byte_for_byte_from_the_store(tmp_path, capsys):
    spec_path = tmp_path / "b.toml"
    spec_path.write_text(SMALL + "[grid]\nbatch_size = [16, 64]\n[finding]\nstatement = 'larger B ends lower'\n"
                                 "metric = 'grad_sq_norm'\nexpect = 'decreasing'\nreference = '1/x'\n")
    db = tmp_path / "r.db"
    assert main(["sweep", str(spec_path), "--store", str(db), "--jobs", "1", "--quiet"]) == 0
    assert main(["report", str(db), "--out", str(tmp_path / "one")]) == 0
    assert main(["report", str(db), "--out", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert any(f"small: {word}" in out for word in ("agrees", "disagrees", "inconclusive"))
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["index.html", "small/curves.png", "small/trend.png"]
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    page = (tmp_path / "one" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "batch_size=16" in page and "larger B ends lower" in page


def seeded(metric: str, values: list[float], **extra) -> dict:
    """A summary whose seeds (0, 1, ...) have the given values of a top-level metric; the run's is their mean."""
    return {metric: sum(values) / len(values), **extra,
            "per_seed": [{"seed": seed, metric: value} for seed, value in enumerate(values)]}


def test_a_trend_agrees_or_disagrees_only_where_the_seeds_resolve_it():
    from vaeconverge.report.findings import check
    from vaeconverge.sweeps import Finding

    falling = Finding("s", "grad_sq_norm", "decreasing")
    down = [seeded("grad_sq_norm", [2.0, 2.2, 1.9, 2.1]), seeded("grad_sq_norm", [1.0, 1.3, 1.1, 0.9])]
    assert check(falling, ["a", "b"], down).agrees is True
    assert check(falling, ["a", "b"], down[::-1]).agrees is False
    # the means fall, but one seed rises as much as the others fall: unresolved
    mixed = [seeded("grad_sq_norm", [2.0, 1.0, 2.0, 1.0]), seeded("grad_sq_norm", [1.0, 2.0, 1.5, 0.9])]
    verdict = check(falling, ["a", "b"], mixed)
    assert verdict.agrees is None and verdict.word == "inconclusive" and "interval" in verdict.detail
    # one seed cannot resolve a trend, however large
    assert check(falling, ["a", "b"], [{"grad_sq_norm": 2.0}, {"grad_sq_norm": 1.0}]).agrees is None
    assert check(falling, ["a", "b"], [down[0], None]).agrees is None
    flagged = check(falling, ["a", "b"], [down[0], {**down[1], "collapsed": True}])
    assert "collapsed runs" in flagged.detail and flagged.detail.endswith("b")


def test_lowest_at_is_paired_by_seed():
    from vaeconverge.report.findings import check
    from vaeconverge.sweeps import Finding

    lowest = Finding("s", "objective", "lowest-at", at="b")
    runs = [seeded("objective", [3.0, 3.1, 2.9]), seeded("objective", [1.0, 1.1, 0.9]),
            seeded("objective", [2.0, 2.2, 1.9])]
    assert check(lowest, ["a", "b", "c"], runs).agrees is True
    assert check(lowest, ["b", "a", "c"], runs).agrees is False  # "b" is now the highest
    # c's seeds share a level with b's seed by seed, offset both ways: unresolved against c
    close = [runs[0], runs[1], seeded("objective", [1.2, 0.9, 1.0])]
    assert check(lowest, ["a", "b", "c"], close).agrees is None
    holds = Finding("s", "bound.holds", "all-true")
    assert check(holds, ["a", "b"], [{"bound": {"holds": True}}, {"bound": {"holds": False}}]).agrees is False


def test_reproduce_runs_the_six_studies_and_reports_each(tmp_path, monkeypatch, capsys):
    from vaeconverge.sweeps import reproduce

    monkeypatch.setattr(reproduce, "QUICK", {"steps": 12, "seeds": [0], "hidden": 8, "eval_every": 6})
    out = tmp_path / "quick"
    assert main(["reproduce", "--quick", "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    names = ("activation", "batch-size", "beta", "depth", "iwae-samples", "optimizer")
    for name in names:
        assert f"{name}: " in printed
        assert (out / name / "trend.png").is_file()
    # 19 runs in the six quick studies, 17 distinct: the base run (B = 64, ReLU, depth 2) is shared and trained once
    assert "17 of 17 runs done" in printed
    page = (out / "index.html").read_text()
    assert all(f"<h2 id='{name}'>" in page for name in names)
    assert page.count("The measured trend") == 6


def test_a_quick_table_trims_the_axes_of_the_quick_version_only():
    spec = parse_spec(SMALL + "[grid]\nbatch_size = [16, 64, 256]\n[quick]\nbatch_size = [16, 256]\n")
    assert [c.batch_size for c in spec.runs()] == [16, 64, 256]
    quick = spec.quickened({"steps": 7})
    assert [(c.batch_size, c.steps) for c in quick.runs()] == [(16, 7), (256, 7)]
    with pytest.raises(SpecError, match=r"quick\.lr: not an axis"):
        parse_spec(SMALL + "[grid]\nbatch_size = [16]\n[quick]\nlr = [0.1]\n")
    with pytest.raises(SpecError, match="zipped axes"):
        parse_spec(SMALL + '[zip]\noptimizer = ["sgd", "adam"]\nlr = [0.1, 1e-3]\n[quick]\nlr = [0.1]\n')
    with pytest.raises(SpecError, match=r"finding\.at"):  # the named run must survive the trimming
        parse_spec(SMALL + "[grid]\nbatch_size = [16, 64]\n[quick]\nbatch_size = [16]\n[finding]\nstatement = 's'\n"
                   "metric = 'objective'\nexpect = 'lowest-at'\nat = 'batch_size=64'\n")

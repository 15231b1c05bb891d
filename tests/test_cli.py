"""The ``vaeconverge train`` command: one-line usage errors with status 2, and the files a run writes."""

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vaeconverge.cli import main
from vaeconverge.config import RunConfig
from vaeconverge.engine import load_checkpoint
from vaeconverge.engine.recorder import METRIC_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUT_FILES = {"metrics.csv", "bands.csv", "summary.json", "convergence.png", "checkpoint.pt"}

# 35 steps with an evaluation every 10: rows at 0, 10, 20, 30 and the last step, 35.
LINEAR = ["train", "--data", "synthetic-linear", "--n-samples", "200", "--data-dim", "6",
          "--true-latent-dim", "2", "--model", "linear", "--likelihood", "gaussian", "--latent-dim", "2",
          "--steps", "35", "--eval-every", "10", "--quiet"]
MLP_DIGITS = ["train", "--data", "digits", "--model", "mlp", "--hidden", "16", "--depth", "1",
              "--steps", "35", "--eval-every", "10", "--eval-samples", "1", "--quiet"]
EXPECTED_STEPS = [0, 10, 20, 30, 35]


def cli(argv):
    """Run ``vaeconverge`` in-process and return its exit status (usage errors included, never SystemExit)."""
    return main([str(a) for a in argv])


def read_metrics(out):
    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


# ---------------------------------------------------------------------------------------------- invalid input

INVALID = [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--samples", "0"], "--samples"),
    (["--beta", "-1"], "--beta"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--steps", "0"], "--steps"),
    (["--eval-every", "0"], "--eval-every"),
    (["--momentum", "1"], "--momentum"),
    (["--adam-betas", "0.9", "1.0"], "--adam-betas"),
    (["--model", "transformer"], "--model"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--schedule", "cosine"], "--schedule"),
    (["--denormals", "ieee"], "--denormals"),
    (["--frobnicate"], "--frobnicate"),
    (["--frobnicate", "3"], "--frobnicate"),
    (["--data", "/nonexistent/x.npy"], "--data"),
    (["--data", "mnist"], "--data"),
    (["--n-samples", "50", "--batch-size", "64"], "--batch-size"),
    (["--steps", "abc"], "--steps"),
    (["--batch-size", "2.5"], "--batch-size"),
]


@pytest.mark.parametrize(("extra", "option"), INVALID, ids=[" ".join(e) for e, _ in INVALID])
def test_invalid_option_is_one_line_and_status_2(tmp_path, capsys, extra, option):
    """Bad input: status 2, exactly one stderr line naming the option, no traceback, nothing written."""
    out = tmp_path / "out"
    status = cli([*LINEAR, "--out", out, *extra])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.endswith("\n")
    assert captured.err.count("\n") == 1, captured.err
    assert option in captured.err
    assert "Traceback" not in captured.err
    assert "error" in captured.err
    assert captured.out == ""
    assert not out.exists()


def test_missing_subcommand_is_one_line(capsys):
    assert cli([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_out_that_is_a_file(tmp_path, capsys):
    """--out naming an existing file is a usage error and the file is left alone."""
    out = tmp_path / "taken"
    out.write_text("keep me")
    assert cli([*LINEAR, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err
    assert out.read_text() == "keep me"


def test_a_folder_holding_a_run_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli([*LINEAR, "--out", out]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli([*LINEAR, "--seed", "1", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli([*LINEAR, "--seed", "1", "--out", out, "--overwrite"]) == 0
    assert (out / "summary.json").read_bytes() != before["summary.json"]


def test_an_empty_out_path_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli([*LINEAR, "--out", ""]) == 2
    assert "empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_outputs_are_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    started = time.perf_counter()
    for flag, path in (("--out", blocker / "sub"), ("--tensorboard", blocker)):
        extra = ["--tensorboard", path] if flag == "--tensorboard" else []
        out = tmp_path / "run" if extra else path
        assert cli([*LINEAR, "--steps", "3000", "--out", out, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err and "Traceback" not in err
        assert not (tmp_path / "run").exists()
    assert time.perf_counter() - started < 10  # refused before 3000 steps of training, not after
    assert blocker.read_text() == "keep me"
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot refuse it
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert cli([*LINEAR, "--out", locked / "run"]) == 2
        assert "permission denied" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [["--lr", "0"], ["--model", "transformer"], ["--data", "/nonexistent/x.npy"],
     ["--n-samples", "50", "--batch-size", "64"]],
    ids=["config-check", "argparse-check", "missing-file", "batch-larger-than-data"],
)
def test_failed_validation_leaves_out_dir_untouched(tmp_path, capsys, extra):
    """A run rejected at any stage of validation does not overwrite the files of an earlier run."""
    out = tmp_path / "out"
    out.mkdir()
    sentinels = {"summary.json": b'{"sentinel": true}\n', "metrics.csv": b"step,sentinel\n0,1\n"}
    for name, content in sentinels.items():
        (out / name).write_bytes(content)

    assert cli([*LINEAR, "--out", out, *extra]) == 2
    capsys.readouterr()

    assert {p.name for p in out.iterdir()} == set(sentinels)
    for name, content in sentinels.items():
        assert (out / name).read_bytes() == content


# ------------------------------------------------------------------------------------------- successful runs


@pytest.mark.parametrize(
    ("argv", "exact_log_likelihood"),
    [(LINEAR, True), (MLP_DIGITS, False)],
    ids=["linear-gaussian", "mlp-bernoulli-digits"],
)
def test_successful_run_writes_all_outputs(tmp_path, capsys, argv, exact_log_likelihood):
    out = tmp_path / "run"
    assert cli([*argv, "--out", out]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.count("\n") == 3  # the run's numbers, its rate, its bound
    assert "35 steps" in captured.out and str(out) in captured.out
    assert captured.out.splitlines()[1].startswith("  rate: ") and "undetermined (1 seeds)" in captured.out
    assert captured.out.splitlines()[2].startswith("  bound: ")

    # exactly the five outputs, no temporary files left behind
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES

    header, rows = read_metrics(out)
    assert header == list(METRIC_COLUMNS)
    assert [int(row[header.index("step")]) for row in rows] == EXPECTED_STEPS
    assert {row[header.index("seed")] for row in rows} == {"0"}
    assert all(len(row) == len(header) for row in rows)
    assert all(math.isfinite(float(row[header.index("objective")])) for row in rows)

    summary = json.loads((out / "summary.json").read_text())
    assert {"config", "steps", "objective", "grad_sq_norm", "log_likelihood", "seconds"} <= set(summary)
    assert set(summary["config"]) == set(RunConfig().to_dict())
    assert RunConfig.from_dict(summary["config"]).validate()  # a complete, valid configuration
    assert summary["config"]["steps"] == 35 and summary["config"]["eval_every"] == 10
    assert summary["steps"] == 35
    assert summary["objective"] == pytest.approx(float(rows[-1][header.index("objective")]), rel=1e-12)
    assert isinstance(summary["grad_sq_norm"], float) and summary["grad_sq_norm"] >= 0
    assert isinstance(summary["seconds"], float) and summary["seconds"] >= 0
    spent = summary["diagnostics_seconds"]  # what the checkpoints and the probes took of the run's time
    assert spent["checkpoints"] > 0 and spent["probes"] >= 0 and sum(spent.values()) < summary["seconds"]
    if exact_log_likelihood:
        assert summary["config"]["model"] == "linear"
        assert isinstance(summary["log_likelihood"], float)
        assert math.isfinite(summary["log_likelihood"])
    else:
        assert summary["config"]["model"] == "mlp" and summary["config"]["data"] == "digits"
        assert summary["log_likelihood"] is None

    assert (out / "convergence.png").read_bytes().startswith(PNG_MAGIC)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["step"] == 35
    assert checkpoint["config"] == summary["config"]


def test_run_on_user_file(tmp_path, capsys):
    """--data accepts a path; the summary records the data's size."""
    path = tmp_path / "mine.npy"
    np.save(path, np.random.default_rng(0).normal(size=(80, 4)))
    out = tmp_path / "run"
    argv = ["train", "--data", path, "--model", "linear", "--likelihood", "gaussian", "--latent-dim", "2",
            "--batch-size", "16", "--steps", "5", "--eval-every", "5", "--quiet", "--out", out]
    assert cli(argv) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"name": str(path), "n": 80, "dim": 4}


def metrics_without_seconds(out):
    header, rows = read_metrics(out)
    keep = [i for i, name in enumerate(header) if name != "seconds"]
    assert len(keep) == len(header) - 1
    return [[row[i] for i in keep] for row in rows]


def objective_column(out):
    header, rows = read_metrics(out)
    return [float(row[header.index("objective")]) for row in rows]


def test_same_seed_same_metrics_other_seed_different(tmp_path, capsys):
    """A seed reproduces every metric except wall-clock time; a different seed changes the objective."""
    runs = {"a": "7", "b": "7", "c": "8"}
    for name, seed in runs.items():
        assert cli([*LINEAR, "--seed", seed, "--out", tmp_path / name]) == 0
    capsys.readouterr()

    assert metrics_without_seconds(tmp_path / "a") == metrics_without_seconds(tmp_path / "b")
    assert len(metrics_without_seconds(tmp_path / "a")) == len(EXPECTED_STEPS)
    first, other = objective_column(tmp_path / "a"), objective_column(tmp_path / "c")
    assert first != other
    assert first[-1] != other[-1]


# -------------------------------------------------------------------------------------------- console script


def test_console_script(tmp_path):
    """The installed ``vaeconverge`` script: status 0 for a valid run, 2 and one clean line for a bad one."""
    script = Path(sys.executable).parent / "vaeconverge"
    assert script.is_file()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = ["train", "--data", "synthetic-linear", "--n-samples", "60", "--data-dim", "4",
            "--true-latent-dim", "2", "--model", "linear", "--likelihood", "gaussian", "--latent-dim", "2",
            "--batch-size", "16", "--steps", "6", "--eval-every", "3", "--quiet"]
    commands = {
        "good": [script, *tiny, "--out", tmp_path / "good"],
        "bad": [script, *tiny, "--out", tmp_path / "bad", "--batch-size", "0"],
    }
    # both processes at once: most of their time is importing torch
    procs = {name: subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, cmd in commands.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        results[name] = (proc.returncode, out, err)

    status, out, err = results["good"]
    assert status == 0, err
    assert {p.name for p in (tmp_path / "good").iterdir()} == OUTPUT_FILES

    status, out, err = results["bad"]
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "--batch-size" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_tensorboard_events_hold_the_metrics(tmp_path, capsys):
    """--tensorboard writes one TensorBoard run per seed (DIR/seed-S) and their mean (DIR/mean), each with every
    checkpoint's grad_sq_norm under the same tag, so that the seeds overlay, as metrics.csv has them."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, logs = tmp_path / "run", tmp_path / "tb"
    assert main(["train", "--hidden", "8", "--depth", "1", "--steps", "20", "--eval-every", "10", "--seeds", "2",
                 "--no-constants", "--quiet", "--out", str(out), "--tensorboard", str(logs)]) == 0
    assert sorted(p.name for p in logs.iterdir()) == ["mean", "seed-0", "seed-1"]
    with (out / "metrics.csv").open(newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    def logged(run: str) -> list[tuple[int, float]]:
        events = EventAccumulator(str(logs / run))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("grad_sq_norm")]

    for seed in (0, 1):
        expected = [(int(r["step"]), r["grad_sq_norm"]) for r in rows if r["seed"] == seed]
        assert [s for s, _ in logged(f"seed-{seed}")] == [s for s, _ in expected] == [0, 10, 20]
        assert [v for _, v in logged(f"seed-{seed}")] == pytest.approx([v for _, v in expected], rel=1e-6)
    mean = [v for _, v in logged("mean")]
    assert mean[-1] == pytest.approx(sum(r["grad_sq_norm"] for r in rows if r["step"] == 20) / 2, rel=1e-6)


def test_tensorboard_without_the_package_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", "--steps", "5", "--quiet", "--out", str(out), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "--tensorboard: needs the tensorboard package" in capsys.readouterr().err
    assert not out.exists()


def test_version_names_the_package_and_torch(capsys):
    from importlib.metadata import version

    import vaeconverge

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vaeconverge {vaeconverge.__version__} (torch {version('torch')})"

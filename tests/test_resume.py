"""`vaeconverge train --resume DIR` and :func:`vaeconverge.api.resume`: a run stopped at n1 steps (by its --steps or a
Ctrl-C) and continued to n2 is, bit for bit on CPU, the run trained straight to n2; a damaged or absent checkpoint,
a finished run or a conflicting option is one line, exit 2, and DIR is left as it was."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from vaeconverge.api import fit, resume
from vaeconverge.cli import main
from vaeconverge.engine.checkpoint import load_replicas
from vaeconverge.engine.recorder import Recorder

# A small linear VAE trained by the Adam recursion the bound covers: the batches and the noise both come from each
# replica's generator, and an epoch (8 batches) ends between checkpoints, so that the resumed streams, epoch sums
# and optimizer must all be exact. With --eval-every 5 and n2 = 2 n1 the two runs evaluate and probe the constants
# at the same steps. The Python API's test trains an MLP of two seeds under a decaying schedule.
TRAIN = ["train", "--data", "synthetic-linear", "--n-samples", "130", "--data-dim", "5", "--true-latent-dim", "2",
         "--model", "linear", "--latent-dim", "2", "--likelihood", "gaussian", "--batch-size", "16",
         "--optimizer", "adam-defossez", "--lr", "0.01", "--eval-every", "5", "--device", "cpu", "--quiet"]
OPTIONS = {"data": "synthetic-linear", "synthetic": {"n_samples": 130, "data_dim": 5, "latent_dim": 2},
           "model": "mlp", "hidden": 8, "depth": 1, "latent_dim": 2, "likelihood": "gaussian", "batch_size": 16,
           "lr": 0.01, "schedule": "sqrt", "eval_every": 5, "device": "cpu"}
RUN_FILES = ("metrics.csv", "bands.csv", "summary.json", "convergence.png", "checkpoint.pt")


def cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def metrics(out: Path) -> list[dict[str, str]]:
    """metrics.csv's rows as written (floats as repr writes them, so equal text is equal bits)."""
    with (out / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def without(rows: list[dict], *columns: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    models_a, _, _ = load_replicas(a / "checkpoint.pt")
    models_b, _, _ = load_replicas(b / "checkpoint.pt")
    assert len(models_a) == len(models_b)
    for left, right in zip(models_a, models_b, strict=True):
        for (name, x), (_, y) in zip(left.state_dict().items(), right.state_dict().items(), strict=True):
            assert torch.equal(x, y), name


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The run trained straight to 40 steps, its constants probed at 0, 20 and 40."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert cli(*TRAIN, "--steps", 40, "--out", out) == 0
    return out


def test_a_resumed_run_is_the_straight_run(tmp_path, straight):
    """Trained to 20 steps and resumed to 40, every row of metrics.csv but the clock, the summary's readings (the
    constants and the bound among them) and the final weights are those of the run trained straight to 40."""
    part = tmp_path / "part"
    assert cli(*TRAIN, "--steps", 20, "--out", part) == 0
    assert json.loads((part / "summary.json").read_text())["steps"] == 20
    assert cli("train", "--resume", part, "--steps", 40, "--quiet") == 0

    resumed, expected = metrics(part), metrics(straight)
    assert without(resumed, "seconds") == without(expected, "seconds")
    assert_same_weights(part, straight)
    got, want = (json.loads((d / "summary.json").read_text()) for d in (part, straight))
    assert got["config"] == want["config"] and got["config"]["steps"] == 40
    assert got["constants"] is not None and got["bound"]["status"] == "applicable"
    for key in ("steps", "objective", "grad_sq_norm", "constants", "bound", "random_iterate", "rate_slope",
                "interrupted"):
        assert got[key] == want[key], key
    assert float(resumed[-1]["seconds"]) > float(resumed[4]["seconds"])  # the clock went on from step 20


def test_the_python_api_resumes_several_seeds(tmp_path):
    """resume() returns the continued run of two seeds, writing nothing; saved, it updates the folder in place."""
    options = {**OPTIONS, "seeds": 2, "constants": False, "optimizer": "adam"}
    fit(steps=10, progress=False, **options).save(tmp_path / "run")
    before = files(tmp_path / "run")
    run = resume(tmp_path / "run", 20, progress=False)
    assert files(tmp_path / "run") == before
    straight = fit(steps=20, progress=False, **options)
    assert [row["seed"] for row in run.metrics] == [row["seed"] for row in straight.metrics]
    for got, want in zip(run.metrics, straight.metrics, strict=True):
        assert all(got[k] == want[k] or (math.isnan(got[k]) and math.isnan(want[k])) for k in got if k != "seconds")
    for model, reference in zip(run.models, straight.models, strict=True):
        for x, y in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
            assert torch.equal(x, y)
    run.save(tmp_path / "run", overwrite=True)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 20


def test_an_interrupted_run_resumed_finishes_as_the_straight_run(tmp_path, monkeypatch, python_sigint, straight):
    """A Ctrl-C during step 12 stops the run after that step (exit 130), recorded; resumed to its own --steps, its
    weights end as the straight run's, and every checkpoint measures the same numbers."""
    observe, seen = Recorder.observe, [0]

    def observing(self, squared_norms):
        seen[0] += 1
        if seen[0] == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return observe(self, squared_norms)

    monkeypatch.setattr(Recorder, "observe", observing)
    part = tmp_path / "part"
    assert cli(*TRAIN, "--steps", 40, "--out", part) == 130
    monkeypatch.setattr(Recorder, "observe", observe)
    summary = json.loads((part / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] == 12  # the step the signal came in, completed
    assert cli("train", "--resume", part) == 0  # on to the run's own 40 steps

    assert_same_weights(part, straight)
    resumed = {row["step"]: row for row in metrics(part)}
    expected = {row["step"]: row for row in metrics(straight)}
    assert set(resumed) == set(expected) | {"12"}  # the step it stopped at is a checkpoint of its own
    measured = ("objective", "objective_se", "grad_sq_norm", "grad_sq_norm_se", "grad_sq_norm_biased", "kl",
                "active_units", "lr", "epoch", "paper_proxy")
    for step, row in expected.items():
        assert {k: resumed[step][k] for k in measured} == {k: row[k] for k in measured}, step
    got = json.loads((part / "summary.json").read_text())
    assert got["interrupted"] is False
    assert got["constants"] == json.loads((straight / "summary.json").read_text())["constants"]


# ------------------------------------------------------------------------------------------------ refusals


def refused(capsys, *argv: object) -> str:
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def damaged(folder: Path, how: str) -> None:
    checkpoint = folder / "checkpoint.pt"
    if how == "missing":
        checkpoint.unlink()
    elif how == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif how == "no-loop":  # a checkpoint written without the loop's state, as before runs could be resumed
        state = torch.load(checkpoint, weights_only=True)
        del state["loop"]
        torch.save(state, checkpoint)
    else:  # the optimizer of one tensor per parameter, as before the stacked replicas shared one flat tensor
        state = torch.load(checkpoint, weights_only=True)
        optimizer = state["optimizer"]
        optimizer["param_groups"][0]["params"] = [0, 1]
        optimizer["state"][1] = optimizer["state"][0]
        torch.save(state, checkpoint)


@pytest.mark.parametrize(("how", "words"), [("missing", "no such checkpoint"), ("truncated", "corrupt or truncated"),
                                            ("no-loop", "no loop state"), ("old-layout", "an earlier vaeconverge")])
def test_a_damaged_checkpoint_is_one_line_and_changes_nothing(tmp_path, capsys, straight, how, words):
    run = tmp_path / "run"
    run.mkdir()
    for name in RUN_FILES:
        (run / name).write_bytes((straight / name).read_bytes())
    damaged(run, how)
    before = files(run)
    err = refused(capsys, "train", "--resume", run, "--steps", 50, "--quiet")
    assert "--resume" in err and words in err and (how == "old-layout" or str(run) in err)
    assert files(run) == before


def test_an_absent_folder_is_one_line(tmp_path, capsys):
    err = refused(capsys, "train", "--resume", tmp_path / "nowhere", "--quiet")
    assert "--resume" in err and "no such checkpoint" in err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(("argv", "option", "words"), [
    ([], "--steps", "already at 40 steps"),
    (["--steps", "40"], "--steps", "already at 40 steps"),
    (["--steps", "30"], "--steps", "already at 40 steps"),
    (["--steps", "50", "--batch-size", "32"], "--batch-size", "has 16"),
    (["--steps", "50", "--n-samples", "140"], "--synthetic", "n_samples=130"),
    (["--steps", "50", "--data", "digits"], "--data", "synthetic-linear"),
    (["--steps", "50", "--out", "elsewhere"], "--out", "not with --resume"),
    (["--steps", "50", "--config", "run.toml"], "--config", "not with --resume"),
])
def test_nothing_to_do_or_a_conflicting_option_is_one_line(capsys, straight, argv, option, words):
    before = files(straight)
    err = refused(capsys, "train", "--resume", straight, "--quiet", *argv)
    assert option in err and words in err, err
    assert files(straight) == before


def test_options_equal_to_the_runs_are_accepted(tmp_path, straight):
    run = tmp_path / "run"
    run.mkdir()
    for name in RUN_FILES:
        (run / name).write_bytes((straight / name).read_bytes())
    assert cli("train", "--resume", run, "--steps", 41, "--batch-size", 16, "--lr", 0.01, "--quiet") == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 41


def test_data_changed_in_value_but_not_in_shape_is_refused(tmp_path, capsys):
    """A run reads its data again to resume: a file rewritten with other values of the same shape is not its data."""
    data = tmp_path / "x.npy"
    rng = np.random.default_rng(0)
    np.save(data, rng.normal(size=(64, 4)).astype(np.float32))
    run = tmp_path / "run"
    assert cli("train", "--data", data, "--model", "linear", "--latent-dim", 2, "--likelihood", "gaussian",
               "--batch-size", 16, "--steps", 10, "--no-constants", "--device", "cpu", "--quiet", "--out", run) == 0
    np.save(data, rng.normal(size=(64, 4)).astype(np.float32))
    before = files(run)
    err = refused(capsys, "train", "--resume", run, "--steps", 20, "--quiet")
    assert "--data" in err and "other values" in err
    assert files(run) == before

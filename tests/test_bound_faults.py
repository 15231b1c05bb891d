"""`vaeconverge bound --from` (and `--compare`) on damaged run folders: one line on stderr naming the option and
the file, exit status 2, nothing changed; a folder it cannot write keeps its figure, and the report still comes."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from vaeconverge.cli.main import main
from vaeconverge.engine.recorder import METRIC_COLUMNS

TRAIN = ["train", "--data", "digits", "--model", "mlp", "--hidden", "8", "--depth", "1", "--latent-dim", "2",
         "--steps", "30", "--eval-every", "10", "--eval-samples", "1", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny finished run (with constants) for the whole module; tests work on copies."""
    out = tmp_path_factory.mktemp("bound_faults") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def good(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "good"))


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of ``folder`` (hidden temporaries included): its bytes and inode (a rewrite changes it)."""
    return {p.name: (p.read_bytes(), p.stat().st_ino) for p in sorted(folder.iterdir()) if p.is_file()}


def _refused(capsys, argv: list[str], option: str) -> str:
    assert main(["bound", *map(str, argv)]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("vaeconverge bound: error: ") and "Traceback" not in err, err
    assert f"error: {option}: " in err, err
    assert captured.out == ""
    return err


# ------------------------------------------------------------------------------------------------ damage

def _edit_summary(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        summary = json.loads((run / "summary.json").read_text())
        change(summary)
        (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return damage


def _edit_metrics(change: Callable[[list[list[str]]], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        with (run / "metrics.csv").open(newline="") as handle:
            rows = list(csv.reader(handle))
        change(rows)
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        (run / "metrics.csv").write_text(text.getvalue())
    return damage


def _cell(column: str, value: str, row: int = 2) -> Callable[[list[list[str]]], None]:
    def change(rows: list[list[str]]) -> None:
        rows[row][rows[0].index(column)] = value
    return change


def _drop_column(column: str) -> Callable[[list[list[str]]], None]:
    def change(rows: list[list[str]]) -> None:
        i = rows[0].index(column)
        for row in rows:
            del row[i]
    return change


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(content)


def _pop(key: str) -> Callable[[dict], None]:
    return lambda summary: summary.pop(key)


def _set(*path_and_value) -> Callable[[dict], None]:
    *keys, last, value = path_and_value

    def change(summary: dict) -> None:
        for key in keys:
            summary = summary[key]
        summary[last] = value
    return change


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    # summary.json
    "summary-truncated": (lambda run: (run / "summary.json").write_bytes((run / "summary.json").read_bytes()[:200]),
                          "summary.json is not valid JSON"),
    "summary-empty": (_write("summary.json", b""), "summary.json is empty"),
    "summary-blank": (_write("summary.json", b"  \n"), "summary.json is empty"),
    "summary-binary": (_write("summary.json", b"\xff\xfe\x00{"), "summary.json is not text"),
    "summary-array": (_write("summary.json", b"[1, 2, 3]\n"), "holds an array, not a run's summary"),
    "summary-nan": (lambda run: (run / "summary.json").write_text(
        (run / "summary.json").read_text().replace('"steps": 30', '"steps": NaN')), "NaN is not a JSON value"),
    "summary-no-config": (_edit_summary(_pop("config")), "summary.json lacks config"),
    "summary-no-steps": (_edit_summary(_pop("steps")), "summary.json lacks steps"),
    "summary-no-data": (_edit_summary(_pop("data")), "summary.json lacks data"),
    "summary-no-constants": (_edit_summary(_pop("constants")), "summary.json lacks constants"),
    "config-not-object": (_edit_summary(_set("config", "mlp")), "config must be an object"),
    "steps-text": (_edit_summary(_set("steps", "30")), "steps must be an integer"),
    "data-without-n": (_edit_summary(lambda s: s["data"].pop("n")), "data.n"),
    "config-invalid-option": (_edit_summary(_set("config", "lr", -1.0)), "--lr"),
    "config-unknown-option": (_edit_summary(_set("config", "frobnicate", 1)), "frobnicate: unknown option"),
    "config-wrong-type": (_edit_summary(_set("config", "batch_size", "64")), "--batch-size"),
    "config-unknown-kind": (_edit_summary(_set("config", "kind", "gan")), "config.kind 'gan'"),
    "config-synthetic-not-object": (_edit_summary(_set("config", "synthetic", 3)), "its config is not a valid"),
    "constants-null": (_edit_summary(_set("constants", None)), "no estimated constants"),
    "constants-incomplete": (_edit_summary(lambda s: s["constants"].pop("L")), "the constants block lacks L"),
    "constant-text": (_edit_summary(_set("constants", "delta", "big")), "the constant delta must be"),
    "constant-zero-L": (_edit_summary(_set("constants", "L", 0)), "the constant L must be a positive number"),
    "constant-zero-batch": (_edit_summary(_set("constants", "batch_size", 0)), "the constant batch_size"),
    # metrics.csv
    "metrics-text-cell": (_edit_metrics(_cell("grad_sq_norm", "abc")), "line 3: grad_sq_norm is 'abc', not a number"),
    "metrics-nan-grad": (_edit_metrics(_cell("grad_sq_norm", "NaN")), "grad_sq_norm is nan at seed 0, step 10"),
    "metrics-nan-step": (_edit_metrics(_cell("step", "NaN")), "line 3: step must be a non-negative integer"),
    "metrics-fractional-seed": (_edit_metrics(_cell("seed", "0.5")), "seed must be a non-negative integer"),
    "metrics-empty": (_write("metrics.csv", b""), "metrics.csv is empty"),
    "metrics-header-only": (_edit_metrics(lambda rows: rows.__delitem__(slice(1, None))), "holds no checkpoint"),
    "metrics-no-grad-column": (_edit_metrics(_drop_column("grad_sq_norm")), "lacks the column grad_sq_norm"),
    "metrics-no-seed-column": (_edit_metrics(_drop_column("seed")), "lacks the column seed"),
    "metrics-short-row": (_edit_metrics(lambda rows: rows[3].pop()),
                          f"line 4: {len(METRIC_COLUMNS) - 1} fields where the header has {len(METRIC_COLUMNS)}"),
    "metrics-repeated-row": (_edit_metrics(lambda rows: rows.append(rows[2])), "a second row for seed 0 at step 10"),
    "metrics-binary": (_write("metrics.csv", b"seed,step\n\xff\xfe\n"), "metrics.csv is not text"),
    # the folder
    "no-metrics": (lambda run: (run / "metrics.csv").unlink(), "not a run folder (no metrics.csv)"),
    "no-summary": (lambda run: (run / "summary.json").unlink(), "not a run folder (no summary.json)"),
    "metrics-is-a-folder": (lambda run: ((run / "metrics.csv").unlink(), (run / "metrics.csv").mkdir()),
                            "no metrics.csv"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_run_is_one_line_exit_2_and_nothing_changes(run, capsys, case):
    damage, message = DAMAGE[case]
    damage(run)
    before = _files(run)
    err = _refused(capsys, ["--from", run], "--from")
    assert message in err and str(run) in err
    assert _files(run) == before  # the damaged files as they were, the figure not redrawn, no temporary left


@pytest.mark.parametrize("case", DAMAGE)
def test_compare_with_a_damaged_run_is_refused_before_the_first_is_redrawn(run, good, capsys, case):
    damage, message = DAMAGE[case]
    damage(run)
    if case.startswith("config-"):
        pytest.skip("--compare reads the other run's constants and metrics, not its configuration")
    before, good_before = _files(run), _files(good)
    err = _refused(capsys, ["--from", good, "--compare", run], "--compare")
    assert message in err and str(run) in err
    assert _files(run) == before and _files(good) == good_before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "absent", "no such folder"),
        (lambda tmp: (tmp / "file.txt", (tmp / "file.txt").write_text("x"))[0], "is a file, not a run folder"),
        (lambda tmp: (tmp / "empty", (tmp / "empty").mkdir())[0], "not a run folder (no metrics.csv or summary.json)"),
    ],
    ids=["absent", "a-file", "not-a-run-folder"],
)
@pytest.mark.parametrize("option", ["--from", "--compare"])
def test_from_or_compare_that_is_no_run_folder(good, tmp_path, capsys, make, message, option):
    target = make(tmp_path)
    argv = ["--from", target] if option == "--from" else ["--from", good, "--compare", target]
    good_before = _files(good)
    err = _refused(capsys, argv, option)
    assert message in err
    assert _files(good) == good_before
    if target.name == "empty":
        assert list(target.iterdir()) == []


def test_the_summary_file_itself_is_not_a_run_folder(run, capsys):
    err = _refused(capsys, ["--from", run / "summary.json"], "--from")
    assert "summary.json is a file, not a run folder" in err


def test_nan_where_nothing_was_measured_is_read_as_such(run, capsys):
    """NaN (and empty) cells stand for what was not measured (the batch gradient at step 0, a likelihood without
    a closed form): read as NaN, the bound's report comes as before."""
    _edit_metrics(_cell("log_likelihood", "NaN"))(run)
    _edit_metrics(_cell("kl", "", row=3))(run)
    assert main(["bound", "--from", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bound"]["status"] == "applicable"


# ------------------------------------------------------------------------------------- a folder not writable

def _tidy(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def _reports_and_warns(capsys, run: Path, *reasons: str) -> None:
    assert main(["bound", "--from", str(run), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # the report in full, on stdout, untouched by the warning
    assert report["run"] == str(run) and report["bound"]["status"] == "applicable"
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("vaeconverge bound: warning: ") and "convergence.png not redrawn" in err
    assert all(reason in err for reason in reasons), err


def test_a_read_only_run_folder_is_read_and_its_figure_kept(run, capsys):
    before = _files(run)
    os.chmod(run, 0o555)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("this user writes into read-only folders (root)")
        _reports_and_warns(capsys, run, "is not writable (Permission denied)")
    finally:
        os.chmod(run, 0o755)
    assert _files(run) == before and _tidy(run) == []


def test_permission_denied_is_reported_and_the_figure_kept_for_any_user(run, capsys, monkeypatch):
    """The kernel's answer in a read-only folder (which root never gets), given to atomic_write."""
    def mkstemp(**_):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("vaeconverge.engine.checkpoint.tempfile", types.SimpleNamespace(mkstemp=mkstemp))
    before = _files(run)
    _reports_and_warns(capsys, run, "is not writable (Permission denied)")
    assert _files(run) == before and _tidy(run) == []


def test_a_write_failing_midway_leaves_the_old_figure_and_no_temporary(run, capsys, monkeypatch):
    def plot_run(metrics, summary, path):
        Path(path).write_bytes(b"\x89PNG half a figure")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vaeconverge.cli.bound.plot_run", plot_run)
    before = _files(run)
    _reports_and_warns(capsys, run, f"could not write into {run} (No space left on device)")
    assert _files(run) == before and _tidy(run) == []


def test_a_writable_run_folder_still_has_its_figure_redrawn(run, capsys):
    (run / "convergence.png").unlink()
    assert main(["bound", "--from", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith(f"run {run}: ")
    assert (run / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _tidy(run) == []

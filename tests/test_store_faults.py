"""Integrity under faults: an interrupted run is never stored as done, reading commands change nothing and refuse
a file that is not a store, one writer at a time, and a damaged store is one clear error (exit 2)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from vaeconverge.cli import main
from vaeconverge.config import RunConfig
from vaeconverge.engine.recorder import METRIC_COLUMNS, Recorder
from vaeconverge.sweeps import Outcome, Store, StoreError, parse_spec, run_id, run_sweep
from vaeconverge.sweeps.grid import Config
from vaeconverge.sweeps.store import BIASED_ERA_NOTE

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = """
name = "small"
seeds = 1
[base]
data = "digits"
hidden = 8
depth = 1
latent-dim = 2
eval_every = 10
constants = false
"""


def _rows(n: int) -> list[dict[str, float]]:
    return [dict.fromkeys(METRIC_COLUMNS, 0.5) | {"seed": 0.0, "step": float(step)} for step in range(n)]


def _small_store(path: Path, runs: int = 3, rows: int = 10, summary_size: int = 10) -> None:
    """A finished sweep of ``runs`` runs written through the store's own API (no training)."""
    configs = [(f"r{i}", RunConfig(lr=10.0 ** -(i + 1))) for i in range(runs)]
    with Store(path) as store:
        store.add_sweep("s", SMALL, configs)
        for identifier, _ in configs:
            store.record(Outcome(identifier, "done", 1.0, summary={"grad_sq_norm": 1.0, "pad": "x" * summary_size},
                                 metrics=_rows(rows)))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class Interrupted:
    """An executor whose first run finishes and whose second comes back cut short by a Ctrl-C."""

    def run(self, tasks: Iterable[tuple[str, Config]], started: Callable[[str], None]) -> Iterator[Outcome]:
        for i, (identifier, _) in enumerate(tasks):
            started(identifier)
            yield Outcome(identifier, "done", 1.0, summary={"interrupted": i == 1}, metrics=_rows(3))


def test_an_interrupted_run_is_queued_again_never_done_and_the_sweep_stops(tmp_path):
    spec = parse_spec(SMALL + "steps = 30\n[grid]\nbatch_size = [16, 32, 64]\n")
    first, second, third = map(run_id, spec.runs())
    with Store(tmp_path / "r.db") as store:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, store, Interrupted(), progress=False)
        assert {run.id: run.status for run in store.runs("small")} == {first: "done", second: "queued",
                                                                       third: "queued"}
        assert store.metrics(second) == [] and store.runs("small")[1].summary is None
        with pytest.raises(ValueError, match="interrupted"):  # the store itself refuses to call it finished
            store.record(Outcome(second, "done", 1.0, summary={"interrupted": True}))
        assert store.counts("small")["done"] == 1


def test_ctrl_c_during_a_jobs_1_sweep_exits_130_and_a_rerun_redoes_the_cut_run(tmp_path, capsys, monkeypatch,
                                                                              python_sigint):
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(SMALL + "[zip]\nsteps = [30, 200000]\n")
    db = tmp_path / "r.db"
    short, long = map(run_id, parse_spec(spec_path.read_text()).runs())
    observe, steps = Recorder.observe, [0]

    def ctrl_c_into_the_long_run(self: Recorder, squared_norms) -> None:
        steps[0] += 1
        if steps[0] == 30 + 20:  # a real SIGINT at step 20 of the long run (the short one has 30 steps)
            os.kill(os.getpid(), signal.SIGINT)
        return observe(self, squared_norms)

    monkeypatch.setattr(Recorder, "observe", ctrl_c_into_the_long_run)
    assert main(["sweep", str(spec_path), "--store", str(db), "--jobs", "1", "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keeps the finished runs" in err and "same command" in err
    with Store(db, readonly=True) as store:
        assert {run.id: run.status for run in store.runs("small")} == {short: "done", long: "queued"}
        assert store.metrics(long) == []


def _refused_by_every_store_command(store: Path, tmp_path: Path, capsys, words: str) -> Path:
    """`sweep status`, `report` and a writing `sweep` on ``store`` each exit 2 with one line naming it and saying
    ``words``; returns the sweep spec written for the last."""
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(SMALL + "steps = 30\n")
    for argv in (["sweep", "status", str(store)], ["report", str(store), "--out", str(tmp_path / "rep")],
                 ["sweep", str(spec_path), "--store", str(store), "--jobs", "1", "--quiet"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and str(store) in err, argv
    return spec_path


def test_reading_commands_refuse_a_foreign_sqlite_file_and_leave_it_as_it_was(tmp_path, capsys):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()
    before = _files(tmp_path)
    spec_path = _refused_by_every_store_command(other, tmp_path, capsys, "not a vaeconverge store")
    assert _files(tmp_path) == before | {"s.toml": spec_path.read_bytes()}  # no tables, no WAL, no lock left
    assert not (tmp_path / "rep").exists()


def test_reading_a_store_changes_none_of_its_bytes(tmp_path, capsys):
    db = tmp_path / "r.db"
    _small_store(db)
    before = _files(tmp_path)
    assert main(["sweep", "status", str(db)]) == 0
    assert "s: 0 queued, 0 running, 3 done" in capsys.readouterr().out
    assert main(["report", str(db), "--out", str(tmp_path / "rep")]) == 0
    after = _files(tmp_path)
    assert after["r.db"] == before["r.db"]  # not a byte: no tables, no migration, no journal switch
    assert set(after) - set(before) <= {"r.db-wal", "r.db-shm"} and not after.get("r.db-wal")  # SQLite's own


def test_a_store_of_an_earlier_version_is_read_as_migrated_without_being_migrated(tmp_path):
    db = tmp_path / "store-v1.db"
    shutil.copyfile(FIXTURES / "store-v1.db", db)
    before = db.read_bytes()
    with Store(db, readonly=True) as store:
        name = store.sweeps()[0][0]
        run = store.runs(name)[0]
        assert run.summary["grad_sq_norm_estimator"] == BIASED_ERA_NOTE and run.summary["grad_sq_norm"] is None
        row = store.metrics(run.id)[0]
        assert row["grad_sq_norm_biased"] > 0 and math.isnan(row["grad_sq_norm"]) and math.isnan(row["kl"])
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["store-v1.db"]


@pytest.mark.skipif(os.geteuid() == 0, reason="as root, a folder's permissions do not apply")
def test_a_store_in_a_read_only_folder_can_still_be_read(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    _small_store(folder / "r.db")
    folder.chmod(0o555)
    try:
        assert main(["sweep", "status", str(folder / "r.db")]) == 0
        assert "3 done" in capsys.readouterr().out
        assert main(["report", str(folder / "r.db"), "--out", str(tmp_path / "rep")]) == 0
    finally:
        folder.chmod(0o755)


def test_one_writer_at_a_time_and_the_lock_names_its_holder(tmp_path):
    db = tmp_path / "r.db"
    with Store(db) as first:
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
            Store(db)
        first.counts()  # the first writer goes on, untouched
        with Store(db, readonly=True) as reader:  # reading needs no lock
            assert reader.counts()["done"] == 0
    with Store(db):  # released with its holder
        pass
    assert not (tmp_path / "r.db.lock").exists()


def test_a_second_driver_exits_2_at_once_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    db = tmp_path / "r.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vaeconverge.sweeps import Store\n"
                               f"s = Store({str(db)!r})\nprint('ready', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        spec_path = tmp_path / "s.toml"
        spec_path.write_text(SMALL + "steps = 30\n")
        assert main(["sweep", str(spec_path), "--store", str(db), "--jobs", "1", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait(10)
    with Store(db) as store:  # killed, it holds nothing
        assert store.counts()["queued"] == 0


def test_a_lock_file_that_is_a_symbolic_link_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "r.db.lock").symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"):
        Store(tmp_path / "r.db")
    assert target.read_text() == "keep" and not (tmp_path / "r.db").exists()


def test_a_store_damaged_in_its_middle_pages_is_one_clear_error(tmp_path, capsys):
    db = tmp_path / "r.db"
    _small_store(db, runs=40, rows=200, summary_size=3000)
    data = bytearray(db.read_bytes())
    assert len(data) > 40 * 4096
    data[len(data) // 4: 3 * len(data) // 4] = b"\xa5" * (3 * len(data) // 4 - len(data) // 4)
    db.write_bytes(bytes(data))
    _refused_by_every_store_command(db, tmp_path, capsys, "not a usable vaeconverge store")
    assert db.read_bytes() == bytes(data)

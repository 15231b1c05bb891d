"""A process-pool sweep (``--jobs 2``) under faults: its driver killed with SIGKILL leaves no process behind
and the same command then finishes every run exactly once; a worker killed mid-run fails that run, saying
so, and the rest of the sweep goes on."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest

from vaeconverge.cli import main
from vaeconverge.sweeps import Store

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree from /proc")

SPEC = """
name = "pool"
seeds = 1
[base]
data = "digits"
hidden = 8
depth = 1
latent-dim = 2
steps = {steps}
eval_every = 10
constants = false
[grid]
lr = {lrs}
"""


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, process group, session, ..."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def _processes() -> dict[int, list[str]]:
    """:func:`_stat` of every process now alive (zombies included)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):  # it ended while we looked
                found[int(entry.name)] = _stat(int(entry.name))
    return found


def _in_session(session: int) -> list[int]:
    """The live processes of ``session`` (a zombie holds nothing but its exit status, so is not counted)."""
    return [pid for pid, fields in _processes().items() if int(fields[3]) == session and fields[0] != "Z"]


def _workers(driver: int) -> list[int]:
    """The driver's pool workers that have got as far as importing torch (so are past their start-up handshake)."""
    workers = []
    for pid, fields in _processes().items():
        with suppress(OSError):
            if (int(fields[1]) == driver and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
                    and "torch" in Path(f"/proc/{pid}/maps").read_text()):
                workers.append(pid)
    return workers


def _statuses(db: Path) -> dict[str, str]:
    """Each run's status in a store a running driver writes (empty until it has made its tables)."""
    try:
        with sqlite3.connect(db) as connection:
            return dict(connection.execute("SELECT id, status FROM runs"))
    except sqlite3.OperationalError:  # no such table yet
        return {}


def _wait_for(condition: Callable[[], object], what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def _sweep(spec: Path, db: Path, **popen) -> subprocess.Popen:
    """``vaeconverge sweep SPEC --store DB --jobs 2`` as a process leading a session of its own."""
    return subprocess.Popen([sys.executable, "-m", "vaeconverge", "sweep", str(spec), "--store", str(db),
                             "--jobs", "2", "--quiet"], start_new_session=True, **popen)


def _end_session(driver: subprocess.Popen) -> None:
    """Whatever a failed test left of the driver's session."""
    for pid in [driver.pid, *_in_session(driver.pid)]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    driver.wait(10)


def test_a_killed_driver_leaves_no_process_and_its_rerun_runs_each_run_once(tmp_path):
    spec = tmp_path / "pool.toml"
    spec.write_text(SPEC.format(steps=150, lrs=[1e-3, 2e-3, 3e-3, 4e-3, 5e-3]))
    db = tmp_path / "r.db"
    driver = _sweep(spec, db, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: "done" in _statuses(db).values() and len(_workers(driver.pid)) == 2,
                  "a run is done and two workers are training")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        _wait_for(lambda: not _in_session(driver.pid), "the driver's workers and resource tracker are gone", 10)
    finally:
        _end_session(driver)
    with sqlite3.connect(db) as connection:
        before = dict(connection.execute("SELECT id, finished FROM runs WHERE status = 'done'"))
    assert 1 <= len(before) < 5, "the driver was to be killed mid-sweep"

    assert main(["sweep", str(spec), "--store", str(db), "--jobs", "2", "--quiet"]) == 0
    with Store(db) as store:
        assert store.counts() == {"queued": 0, "running": 0, "done": 5, "failed": 0, "diverged": 0}
        for run in store.runs("pool"):
            assert [row["step"] for row in store.metrics(run.id)] == list(range(0, 151, 10))  # once each
    with sqlite3.connect(db) as connection:
        after = dict(connection.execute("SELECT id, finished FROM runs"))
    assert all(after[run] == finished for run, finished in before.items())  # kept, not run again


def test_a_killed_worker_fails_its_run_with_the_reason_and_the_sweep_goes_on(tmp_path):
    spec = tmp_path / "pool.toml"
    spec.write_text(SPEC.format(steps=300, lrs=[1e-3, 2e-3, 3e-3]))
    db = tmp_path / "r.db"
    driver = _sweep(spec, db, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _workers(driver.pid), "a worker is training")
        worker = _workers(driver.pid)[0]
        os.kill(worker, signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        _end_session(driver)
    assert driver.returncode == 1, err  # a run failed: not every run is done
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    assert "1 failed" in out and "2 done" in out
    with Store(db) as store:
        (failed,) = [run for run in store.runs("pool") if run.status == "failed"]
        assert f"worker process {worker} died (killed by signal {signal.SIGKILL.value}" in failed.error
        assert store.counts() == {"queued": 0, "running": 0, "done": 2, "failed": 1, "diverged": 0}

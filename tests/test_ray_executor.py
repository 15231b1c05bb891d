"""Sweeps on Ray (a local 2-CPU instance started here): the stored numbers equal the local executor's, a task
whose worker is killed with SIGKILL mid-run is retried (or, without retries, recorded failed with the reason),
training's own failures are outcomes, and asking for Ray without it installed is a one-line error."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sweeps import RELU  # the local executor's small sweep, with ReLU so that lr 1e8 diverges
from test_sweeps import SMALL as SWEEP_BASE

from vaeconverge.cli import main
from vaeconverge.config import ConfigError

SMALL = SWEEP_BASE + "[grid]\nbatch_size = [16, 32]\n"
EXECUTION = ("seconds", "diagnostics_seconds", "threads")  # how a run executed, not what it computed


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[object]:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'vaeconverge[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "small.toml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def local(spec_path: Path) -> dict[str, tuple]:
    """The sweep's stored numbers from the local executor, in this process (``--jobs 1``)."""
    db = spec_path.with_name("local.db")
    assert main(["sweep", str(spec_path), "--store", str(db), "--jobs", "1", "--quiet"]) == 0
    return _stored(db)


def _stored(db: Path) -> dict[str, tuple]:
    """Per run: status, error, summary without the execution keys, and every metric row without its timing."""
    with sqlite3.connect(db) as connection:
        runs = connection.execute("SELECT id, status, error, diverged_step, summary FROM runs").fetchall()
        stored = {}
        for run_id, status, error, step, summary in runs:
            rows = connection.execute("SELECT * FROM metrics WHERE run_id = ? ORDER BY seed, step", (run_id,))
            names = [column[0] for column in rows.description]
            metrics = [{k: v for k, v in zip(names, row, strict=True) if k != "seconds"} for row in rows]
            numbers = None if summary is None else _without_execution(json.loads(summary))
            stored[run_id] = (status, error, step, numbers, metrics)
    return stored


def _without_execution(summary: dict) -> dict:
    summary = {key: value for key, value in summary.items() if key not in EXECUTION}
    summary["config"] = {key: value for key, value in summary["config"].items() if key != "threads"}
    return summary


def test_a_sweep_on_ray_stores_exactly_what_the_local_executor_stores(ray_instance, spec_path, local, tmp_path):
    db = tmp_path / "ray.db"
    assert main(["sweep", str(spec_path), "--store", str(db), "--executor", "ray", "--cpus-per-run", "1",
                 "--quiet"]) == 0
    on_ray = _stored(db)
    assert on_ray.keys() == local.keys() and len(on_ray) == 2
    for run_id, (status, _, _, summary, metrics) in on_ray.items():
        assert status == "done" and len(metrics) == 2 * 4  # 2 seeds x checkpoints 0, 10, 20, 30
        assert (summary, metrics) == local[run_id][3:]  # bit for bit: floats compared with ==
    with sqlite3.connect(db) as connection:
        threads = {json.loads(s)["threads"] for (s,) in connection.execute("SELECT summary FROM runs")}
    assert threads == {1}  # trained on --cpus-per-run threads, as a process pool's worker would


class _KillWorkers(threading.Thread):
    """SIGKILLs the first ``count`` Ray workers (descendants of this process) seen running a run."""

    def __init__(self, count: int) -> None:
        super().__init__(daemon=True)
        self.count, self.killed, self.stop = count, [], threading.Event()

    def run(self) -> None:
        while len(self.killed) < self.count and not self.stop.wait(0.002):
            for pid in _descendants(os.getpid()):
                if len(self.killed) < self.count and pid not in self.killed and _title(pid) == b"ray::execute":
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)


def _title(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return b""


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's workers through /proc")
@pytest.mark.parametrize("retries", [1, 0])
def test_a_task_killed_mid_run_is_retried_or_recorded_failed(ray_instance, spec_path, local, tmp_path, retries):
    db = tmp_path / "ray.db"
    killer = _KillWorkers(count=1)
    killer.start()
    try:
        status = main(["sweep", str(spec_path), "--store", str(db), "--executor", "ray", "--retries", str(retries),
                       "--quiet"])
    finally:
        killer.stop.set()
        killer.join()
    assert len(killer.killed) == 1
    on_ray = _stored(db)
    if retries:
        assert status == 0
        assert {run_id: numbers[3:] for run_id, numbers in on_ray.items()} == {
            run_id: numbers[3:] for run_id, numbers in local.items()}
    else:
        assert status == 1
        failed = [numbers for numbers in on_ray.values() if numbers[0] == "failed"]
        done = [run_id for run_id, numbers in on_ray.items() if numbers[0] == "done"]
        assert len(failed) == 1 and len(done) == 1  # the sweep went on
        assert failed[0][1].startswith("its worker died on every attempt (1): WorkerCrashedError")
        assert on_ray[done[0]][3:] == local[done[0]][3:]
        # the failed run is queued again by --retry-failed, and then stored like the local one
        assert main(["sweep", str(spec_path), "--store", str(db), "--executor", "ray", "--retry-failed",
                     "--quiet"]) == 0
        assert {k: v[3:] for k, v in _stored(db).items()} == {k: v[3:] for k, v in local.items()}


def test_training_failures_are_outcomes_as_on_the_local_executor(ray_instance, tmp_path):
    """Divergence (SGD at lr 1e8) and an exception (a conv network on the digits) come back as the run's outcome,
    recorded with their reason exactly as locally, and are not retried (Ray sees a task that returned)."""
    spec = tmp_path / "fails.toml"
    spec.write_text(RELU + '[zip]\noptimizer = ["sgd", "adam"]\nlr = [1e8, 1e-3]\n'
                    'model = ["mlp", "conv32"]\n')
    stored = {}
    for name, executor in (("local", ["--jobs", "1"]), ("ray", ["--executor", "ray", "--retries", "3"])):
        assert main(["sweep", str(spec), "--store", str(tmp_path / f"{name}.db"), *executor, "--quiet"]) == 1
        stored[name] = {run_id: numbers[:3] for run_id, numbers in _stored(tmp_path / f"{name}.db").items()}
    assert stored["ray"] == stored["local"]
    assert sorted(status for status, _, _ in stored["ray"].values()) == ["diverged", "failed"]
    assert any("conv32 takes 3x32x32 images" in (error or "") for _, error, _ in stored["ray"].values())


def test_asking_for_ray_without_it_installed_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    spec = tmp_path / "s.toml"
    spec.write_text(SMALL)
    assert main(["sweep", str(spec), "--store", str(tmp_path / "r.db"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'vaeconverge[ray]'" in err and "--executor" in err
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(("argv", "option"), [
    (["--executor", "ray", "--jobs", "2"], "--jobs"),
    (["--address", "auto"], "--address"),
    (["--cpus-per-run", "2"], "--cpus-per-run"),
    (["--retries", "2"], "--retries"),
])
def test_an_option_of_the_other_executor_is_an_error(tmp_path, capsys, argv, option):
    spec = tmp_path / "s.toml"
    spec.write_text(SMALL)
    assert main(["sweep", str(spec), "--store", str(tmp_path / "r.db"), *argv]) == 2
    assert f"error: {option}: " in capsys.readouterr().err


def test_runs_at_once_are_what_the_nodes_hold():
    from vaeconverge.sweeps.ray_executor import _slots

    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 4.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert _slots(nodes, cpus=4, gpus=0) == 2 + 1
    assert _slots(nodes, cpus=3, gpus=0) == 2 + 1  # CPUs are not pooled across nodes
    assert _slots(nodes, cpus=1, gpus=0.5) == 4
    assert _slots(nodes, cpus=1, gpus=1) == 2
    with pytest.raises(ConfigError, match="--cpus-per-run"):
        _slots(nodes, cpus=16, gpus=0)
    with pytest.raises(ConfigError, match="--gpus-per-run"):
        _slots(nodes, cpus=1, gpus=4)
    assert _slots(nodes, cpus=1, gpus=0) == 8 + 4

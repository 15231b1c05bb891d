"""SIGINT and SIGTERM stop `train` alike: what was measured is written whole (a second signal waits until it is),
the exit status is 130, and a signal before the first checkpoint is one line, not a traceback."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from vaeconverge.cli import main
from vaeconverge.engine.recorder import Recorder
from vaeconverge.report import run_folder

OUTPUT_FILES = {"metrics.csv", "bands.csv", "summary.json", "convergence.png", "checkpoint.pt"}
TRAIN = ["train", "--data", "synthetic-linear", "--n-samples", "200", "--data-dim", "6", "--true-latent-dim", "2",
         "--model", "linear", "--likelihood", "gaussian", "--latent-dim", "2", "--steps", "100000",
         "--eval-every", "20", "--quiet"]


def _signal_at_step(monkeypatch, signum: int, step: int) -> None:
    """Send ``signum`` to this process while the loop reports the minibatch norms of step ``step``."""
    observe, seen = Recorder.observe, [0]

    def observing(self, squared_norms):
        seen[0] += 1
        if seen[0] == step:
            os.kill(os.getpid(), signum)
        return observe(self, squared_norms)

    monkeypatch.setattr(Recorder, "observe", observing)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_writes_what_was_measured_and_exits_130(tmp_path, capsys, monkeypatch, signum):
    _signal_at_step(monkeypatch, signum, 50)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 130
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] == 50  # the step it came in, completed, is the last
    assert "(interrupted)" in capsys.readouterr().out


def test_a_second_signal_waits_until_the_run_is_written(tmp_path, capsys, monkeypatch):
    _signal_at_step(monkeypatch, signal.SIGINT, 30)
    plot = run_folder.plot_run

    def plotting(*args, **kwargs):  # Ctrl-C again while the figure is drawn
        os.kill(os.getpid(), signal.SIGINT)
        return plot(*args, **kwargs)

    monkeypatch.setattr(run_folder, "plot_run", plotting)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 130
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES


def test_a_signal_before_the_first_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    def probing(self, t, step):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal should have stopped the probe")

    monkeypatch.setattr(Recorder, "probe", probing)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    assert {sig: signal.getsignal(sig) for sig in before} == before  # the previous handlers are back


def test_a_ctrl_c_inside_the_denormals_team_is_not_swallowed(monkeypatch, python_sigint):
    """The flush-to-zero bits are set by a ctypes callback on every OpenMP thread; ctypes swallows a callback's
    exceptions, so a Ctrl-C handled there would be lost (a sweep then trained on for 200,000 steps)."""
    from vaeconverge import runtime

    if runtime._gomp_parallel() is None:
        pytest.skip("torch's intra-op threads are not GNU OpenMP's here")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    real, calls = torch.set_flush_denormal, [0]

    def sending(on: bool) -> bool:
        calls[0] += 1
        if calls[0] == 2:  # the first call inside the team
            os.kill(os.getpid(), signal.SIGINT)
        return real(on)

    monkeypatch.setattr(torch, "set_flush_denormal", sending)
    with pytest.raises(KeyboardInterrupt):
        runtime._set_flush_denormal_everywhere(runtime.flushes_denormals())

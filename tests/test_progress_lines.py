"""Progress where stderr is no terminal (a log, CI, a pipe; here pytest's capture): `train` writes one plain line per
checkpoint and a sweep one per finished run, instead of a tqdm bar; before the step-0 constants a line says what is
being estimated; --quiet writes nothing; on a terminal the bar stays."""

from __future__ import annotations

import re
import sys

from vaeconverge.cli import main
from vaeconverge.engine.loop import CONSTANTS_NOTE

TRAIN = ["train", "--data", "synthetic-linear", "--n-samples", "120", "--data-dim", "5", "--true-latent-dim", "2",
         "--model", "linear", "--likelihood", "gaussian", "--latent-dim", "2", "--steps", "20", "--eval-every", "5",
         "--device", "cpu"]
# step k/n: objective, the full-gradient reading, the seconds since the start
CHECKPOINT_LINE = re.compile(r"train: step (\d+)/20: objective \S+, grad_sq_norm \S+( \(means of 2 seeds\))?, "
                             r"\d+\.\ds")


def test_train_writes_a_line_per_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == CONSTANTS_NOTE  # before the first, slow, checkpoint
    steps = [int(CHECKPOINT_LINE.fullmatch(line).group(1)) for line in lines[1:]]
    assert steps == [0, 5, 10, 15, 20]
    assert steps == sorted({int(row.split(",")[1]) for row in (out / "metrics.csv").read_text().splitlines()[1:]})


def test_the_means_of_several_seeds_and_no_note_without_constants(tmp_path, capsys):
    assert main([*TRAIN, "--seeds", "2", "--no-constants", "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5 and all(CHECKPOINT_LINE.fullmatch(line).group(2) for line in lines)


def test_quiet_writes_nothing(tmp_path, capsys):
    assert main([*TRAIN, "--quiet", "--no-constants", "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_the_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main([*TRAIN, "--no-constants", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "\r" in err and "/20 [" in err  # tqdm redraws its bar in place
    assert not CHECKPOINT_LINE.search(err)


def test_a_sweep_writes_a_line_per_finished_run(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "lines"\nseeds = 1\n[base]\ndata = "synthetic-linear"\nmodel = "linear"\n'
                    'likelihood = "gaussian"\nlatent_dim = 2\nsteps = 6\neval_every = 3\nconstants = false\n'
                    '[base.synthetic]\nn_samples = 60\ndata_dim = 4\n[grid]\nbatch_size = [8, 16]\n')
    assert main(["sweep", str(spec), "--store", str(tmp_path / "s.db"), "--jobs", "1"]) == 0
    err = capsys.readouterr().err
    seconds = re.findall(r"done in (\d+\.\d)s", err)
    assert err.splitlines() == [f"sweep lines: {k}/2 runs; batch_size={b} done in {s}s"
                                for k, b, s in zip((1, 2), (8, 16), seconds, strict=True)]


"""``vaeconverge reproduce --paper``: the paper's two studies on CIFAR-100 and CelebA files written here in their
official formats (read by the real loaders), sized from the data (a data set smaller than B = 256 is one batch,
an epoch is floor(N / B) steps), estimated before anything trains and refused on a CPU above the limit, run end
to end to a report with both studies' verdicts, resumed without training again; and every way to ask for it
wrongly, refused in one line before anything is written."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaeconverge.cli import main
from vaeconverge.config import ConfigError
from vaeconverge.sweeps import Store
from vaeconverge.sweeps.paper import CPU_LIMIT_SECONDS, check_budget, sized
from vaeconverge.sweeps.reproduce import paper_studies

PAPER = {"paper-celeba-activation", "paper-cifar-iwae"}


def write_cifar(root: Path, n: int) -> None:
    """CIFAR-100's "python version" training file: a pickled dictionary of bytes keys, uint8 rows of 3072."""
    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"training batch 1 of 1", b"fine_labels": rng.integers(0, 100, n).tolist(),
             b"data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)}
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "train").write_bytes(pickle.dumps(batch, protocol=2))


def write_celeba(root: Path, n: int) -> None:
    """CelebA's aligned 178x218 JPEGs and its partition file, every image in the train split."""
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(28, 23, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((178, 218), Image.Resampling.BICUBIC).save(folder / f"{i + 1:06d}.jpg")
    (root / "celeba" / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg 0\n" for i in range(n)))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Both data sets, each far smaller than the paper's batch of 256."""
    root = tmp_path / "data"
    write_cifar(root, 3)
    write_celeba(root, 2)
    return root


def one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_paper_studies_are_the_published_protocol_and_run_only_with_paper():
    studies = paper_studies(paper=True)
    assert {spec.name for spec in studies} == PAPER
    assert not PAPER & {spec.name for spec in [*paper_studies(), *paper_studies(quick=True)]}
    runs = {spec.name: spec.runs() for spec in studies}
    for config in [*runs["paper-celeba-activation"], *runs["paper-cifar-iwae"]]:
        assert (config.latent_dim, config.batch_size, config.optimizer, config.lr, config.schedule,
                config.likelihood, config.seeds) == (100, 256, "adam", 1e-3, "epoch-sqrt", "bernoulli", (0, 1, 2, 3))
    assert [(c.data, c.model, c.activation, c.softclip_s) for c in runs["paper-celeba-activation"]] == [
        ("celeba", "conv64", "relu", 5.0), *(("celeba", "conv64", "softclip", s) for s in (1.0, 2.0, 5.0, 10.0))]
    assert [(c.data, c.model, c.objective, c.samples) for c in runs["paper-cifar-iwae"]] == [
        ("cifar100", "conv32", "iwae", k) for k in (1, 5, 10, 50, 100)]


def test_an_epoch_is_floor_n_over_b_steps_and_a_small_data_set_is_one_batch(tmp_path, data_dir):
    """600 examples at B = 256 make 2 steps an epoch (the tail of 88 dropped, as every epoch of the engine);
    2 examples make a batch of 2, said in a line."""
    big = tmp_path / "big"
    write_cifar(big, 600)
    (cifar,) = paper_studies(paper=True, studies=["paper-cifar-iwae"], data_dir=str(big))
    (specs, data, notes) = sized([cifar], 3, progress=False)
    assert {(c.batch_size, c.steps) for c in specs[0].runs()} == {(256, 3 * (600 // 256))}
    assert notes == [] and tuple(data["cifar100"].shape) == (600, 3072)
    (celeba,) = paper_studies(paper=True, studies=["paper-celeba-activation"], data_dir=str(data_dir))
    (specs, _, notes) = sized([celeba], 3, progress=False)
    assert {(c.batch_size, c.steps) for c in specs[0].runs()} == {(2, 3)}
    assert notes == ["paper-celeba-activation: celeba holds 2 training examples, fewer than B = 256: each batch is "
                     "the whole data set (B = 2)"]


def test_only_a_cpu_estimate_above_the_limit_is_refused_and_yes_runs_it_anyway():
    cpu, over = torch.device("cpu"), CPU_LIMIT_SECONDS + 1.0
    with pytest.raises(ConfigError, match=r"^--paper: the runs would take about 2 h 00 min on this CPU \(the limit is "
                                          r"2 h 00 min\); pass --epochs E to shorten them or --yes to run anyway$"):
        check_budget(over, cpu, yes=False)
    with pytest.raises(ConfigError, match="would take more than 2 h 00 min"):
        check_budget(over, cpu, yes=False, complete=False)
    check_budget(over, cpu, yes=True)
    check_budget(over, torch.device("cuda"), yes=False)
    check_budget(CPU_LIMIT_SECONDS, cpu, yes=False)


def test_reproduce_paper_estimates_then_runs_both_studies_to_a_report_and_resumes(tmp_path, data_dir, capsys):
    out = tmp_path / "paper"
    command = ["reproduce", "--paper", "--epochs", "1", "--data-dir", str(data_dir), "--device", "cpu", "--quiet",
               "--out", str(out)]
    assert main(command) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "paper-cifar-iwae: cifar100 holds 3 training examples, fewer than B = 256: each batch is the whole data " \
           "set (B = 3)" in printed
    assert printed[2].startswith("10 runs of 1 epoch, 4 seeds each, one after another on cpu")
    table = printed[3:13]
    assert [line.split()[0] for line in table] == ["paper-celeba-activation"] * 5 + ["paper-cifar-iwae"] * 5
    span = r"(\d+ s|\d+ min|\d+ h \d\d min)"
    assert all(re.search(rf"\bB=[23] +1 steps +{span} +\(\+ checkpoints {span}\)$", line) for line in table), table
    assert printed[13].startswith("estimated total: ")
    verdicts = {line.split(":")[0]: line for line in printed[14:16]}
    assert set(verdicts) == PAPER
    assert all(re.match(r"[a-z-]+: (agrees|disagrees|inconclusive) \(", line) for line in verdicts.values())
    assert printed[-1] == f"10 of 10 runs done; report: {out / 'index.html'}"
    with Store(out / "results.db", readonly=True) as store:
        for name, n in (("paper-celeba-activation", 2), ("paper-cifar-iwae", 3)):
            runs = store.runs(name)
            assert {(run.status, run.config.batch_size, run.config.steps, run.config.data_dir) for run in runs} == {
                ("done", n, 1, str(data_dir))}
            assert {run.summary["data"]["n"] for run in runs} == {n}
    page = (out / "index.html").read_text()
    assert "paper-celeba-activation" in page and "paper-cifar-iwae" in page

    assert main(command) == 0  # the same command again: nothing left to time or train
    printed = capsys.readouterr().out.splitlines()
    assert "every run of these studies is already in the store" in printed
    assert printed[-1] == f"10 of 10 runs done; report: {out / 'index.html'}"


def test_an_estimate_above_the_cpu_limit_is_refused_before_anything_is_written(tmp_path, data_dir, capsys):
    out = tmp_path / "paper"
    code = main(["reproduce", "--paper", "--epochs", str(10**9), "--data-dir", str(data_dir), "--device", "cpu",
                 "--quiet", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 2 and printed.err.count("\n") == 1, printed.err
    assert re.fullmatch(r"vaeconverge reproduce: error: --paper: the runs would take more than \d+ h \d\d min on this "
                        r"CPU \(the limit is 2 h 00 min\); pass --epochs E to shorten them or --yes to run anyway\n",
                        printed.err), printed.err
    lines = printed.out.splitlines()  # the first run's estimate, then no more timing: it is already too long
    assert lines[-2].split()[:2] == ["paper-celeba-activation", "activation=relu,"]
    assert "1,000,000,000 steps" in lines[-2]
    assert lines[-1].startswith("estimated total: more than ") and lines[-1].endswith("(the other 9 runs not timed)")
    assert not out.exists()


def test_missing_data_is_one_line_naming_the_folder_and_the_download_before_any_training(tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "paper"
    write_cifar(empty, 3)  # CelebA alone is missing
    err = one_line_error(capsys, main(["reproduce", "--paper", "--data-dir", str(empty), "--out", str(out)]))
    assert f"the paper's data are not in {empty} (looked for celeba: {empty / 'celeba' / 'img_align_celeba'})" in err
    assert "fetch them with vaeconverge data download celeba --mirror URL" in err and "cifar100" not in err
    assert not out.exists()


@pytest.mark.parametrize(("args", "problem"), [
    (["--paper", "--quick"], "--quick: not with --paper"),
    (["--paper", "--data", "digits"], "--data: not with --paper"),
    (["--epochs", "3"], "--epochs: applies only with --paper"),
    (["--yes"], "--yes: applies only with --paper"),
    (["--paper", "--epochs", "0"], "--epochs: must be at least 1 (got 0)"),
    (["--paper", "--study", "activation"], "--study: 'activation' is not a study of --paper; the studies are "
                                           "paper-celeba-activation, paper-cifar-iwae"),
    (["--study", "paper-cifar-iwae"], "--study: 'paper-cifar-iwae' is the paper's protocol: run it with --paper"),
])
def test_a_wrong_request_is_one_line(tmp_path, data_dir, capsys, args, problem):
    out = tmp_path / "paper"
    err = one_line_error(capsys, main(["reproduce", *args, "--data-dir", str(data_dir), "--out", str(out)]))
    assert problem in err
    assert not out.exists()

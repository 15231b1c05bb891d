"""Hostile and mistaken input that used to mislead or crash (issue 19, items 12, 14 and 16): seeds outside torch's
range, values that are not finite, requests too large for memory (refused from an estimate, before anything is
allocated), list options given as numbers, a folder as data, sweeps whose data or findings are wrong, and output
folders that cannot be written. Each gives exit status 2 and one line naming the option."""

import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from vaeconverge import runtime
from vaeconverge.bbvi import BBVIConfig
from vaeconverge.bbvi import train as train_bbvi
from vaeconverge.cli import main
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.engine import train
from vaeconverge.engine.plan import step_cost
from vaeconverge.engine.recorder import SUMMARY_KEYS
from vaeconverge.models import build_vae
from vaeconverge.monitor import ConvergenceMonitor
from vaeconverge.objectives import build_objective
from vaeconverge.sweeps import SpecError, parse_spec

TINY = ["train", "--hidden", "8", "--depth", "1", "--steps", "4", "--quiet"]


def refused(argv, capsys) -> str:
    """Run the command, which must exit 2 with one line on stderr; return that line."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("argv", "words"), [
    (["--seed", "99999999999999999999999"], "--seed: seeds are integers from 0 to 2^63 - 1"),
    (["--seed", "-1"], "--seed: seeds are integers"),
    (["--seeds", "-1,2"], "--seeds: seeds are integers"),
    (["--seeds", "3", "--seed", str(2**63 - 2)], "--seeds: seeds are integers"),
    (["--seeds", "1000000000"], "the number of seeds must lie in [1, 10000]"),
    (["--data-seed", "-3"], "--data-seed: seeds are integers"),
    (["--beta", "inf"], "--beta: must be a finite number (got inf)"),
    (["--lr", "-1e-3"], "--lr: must be positive (got -0.001)"),
    (["--threads", "100000"], "--threads: at most 1024 (got 100000)"),
])
def test_misread_options_are_named_for_what_they_are(tmp_path, capsys, argv, words):
    assert words in refused([*TINY, *argv, "--out", tmp_path / "run"], capsys)
    assert not (tmp_path / "run").exists()


def test_bbvi_names_its_seed_too(tmp_path, capsys):
    assert "--seed: seeds are integers" in refused(["bbvi", "--seed", "-2", "--out", tmp_path / "b"], capsys)


def test_a_folder_given_as_data_is_called_a_folder(tmp_path, capsys):
    assert "is a directory" in refused([*TINY, "--data", tmp_path, "--out", tmp_path / "run"], capsys)


@pytest.mark.parametrize("value", [0.9, "0.9", [0.9]])
def test_a_list_option_given_as_anything_else_names_the_option(value):
    for config in (RunConfig, BBVIConfig):
        with pytest.raises(ConfigError, match=r"adam_betas: expected a list of 2 values, like \[0.9, 0.999\]"):
            config.from_dict({"adam_betas": value})
    with pytest.raises(ConfigError, match="seeds: expected a list"):
        RunConfig.from_dict({"seeds": 3})


def test_adam_betas_that_are_not_numbers_name_the_option():
    with pytest.raises(ConfigError, match="--adam-betas: must be a number"):
        RunConfig(adam_betas=("a", 0.9)).validate()


# ---------------------------------------------------------------------------------------- memory, estimated first

@pytest.mark.parametrize(("argv", "option"), [
    (["--samples", "1000000000"], "--batch-size"),
    (["--hidden", "100000000", "--depth", "3"], "--hidden"),
    (["--data", "synthetic-linear", "--likelihood", "gaussian", "--n-samples", "1000000000"], "--n-samples"),
    (["--data", "synthetic-linear", "--likelihood", "gaussian", "--data-dim", "100000000"], "--data-dim"),
])
def test_a_run_too_large_for_memory_is_refused_with_its_estimate(tmp_path, capsys, argv, option):
    err = refused([*TINY, *argv, "--out", tmp_path / "run"], capsys)
    assert err.startswith(f"vaeconverge train: error: {option}:") and "needs about" in err, err
    assert "of memory available" in err


def test_the_estimate_is_made_on_the_meta_device_and_matches_the_real_step():
    """The step's operations counted on the meta device are those of the real step; its tensors grow with the
    batch; and a step far larger than memory is measured without allocating it."""
    config = RunConfig(hidden=32, depth=1)
    objective = build_objective(config)

    def cost(batch: int, device: str, samples: int = 1):
        with torch.device(device):
            model = build_vae(config, 64)
            return step_cost(model, partial(objective, model), batch, torch.rand(batch, 64),
                             torch.randn(samples, batch, config.latent_dim))

    real, meta = cost(16, "cpu"), cost(16, "meta")
    assert meta.flops == real.flops > 0 and meta.parameters == real.parameters
    assert meta.forward_bytes == real.forward_bytes
    assert cost(32, "meta").forward_bytes == pytest.approx(2 * meta.forward_bytes, rel=0.05)
    huge = cost(10**9, "meta", samples=10**6)
    state, activations = huge.run_bytes(replicas=1, examples=100)
    assert activations > 1e18 and state == (6 + 4 * huge.probe_examples()) * 4 * huge.parameters


def test_an_array_file_larger_than_memory_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1000, 100), dtype=np.float32))
    monkeypatch.setattr(runtime, "available_memory", lambda device=None: 100_000)
    err = refused([*TINY, "--data", path, "--likelihood", "gaussian", "--out", tmp_path / "run"], capsys)
    assert "--data:" in err and "100,000 values" in err and "needs about" in err


def test_a_cifar_pickle_declaring_a_huge_array_is_one_line(tmp_path, capsys):
    class Declared:  # what numpy's pickles call to make an empty array, here of 2^40 bytes
        def __reduce__(self):
            return np._core.multiarray._reconstruct, (np.ndarray, (2**40,), b"B")

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({b"data": Declared()}, protocol=2))
    err = refused([*TINY, "--data", "cifar100", "--data-dir", tmp_path, "--out", tmp_path / "run"], capsys)
    assert "--data:" in err


# ------------------------------------------------------------------------------------------------------- sweeps

SWEEP = "[base]\nsteps = 4\nhidden = 8\ndepth = 1\n"


def test_a_spec_with_a_repeated_run_is_refused_before_the_store_is_created(tmp_path, capsys):
    spec = tmp_path / "dup.toml"
    spec.write_text(SWEEP + "[grid]\nlr = [0.001, 0.001]\n")
    err = refused(["sweep", spec, "--store", tmp_path / "s.db"], capsys)
    assert "runs 1 and 2 have the same configuration" in err
    assert list(tmp_path.iterdir()) == [spec]


def test_a_finding_must_name_a_summary_key():
    text = SWEEP + '[grid]\nlr = [0.001, 0.002]\n[finding]\nstatement = "x"\nexpect = "decreasing"\n'
    with pytest.raises(SpecError, match=r"finding.metric: 'grad_norm' is not a key .*did you mean 'grad_sq_norm'"):
        parse_spec(text + 'metric = "grad_norm"\n', "s.toml")
    assert parse_spec(text + 'metric = "constants.L"\n', "s.toml").finding.metric == "constants.L"


def test_summary_keys_are_the_keys_runs_write():
    """SUMMARY_KEYS, which findings are checked against, is the union of what a VAE (linear, with its pPCA
    extras), a BBVI and a monitored run write."""
    vae = RunConfig(data="synthetic-linear", model="linear", likelihood="gaussian", latent_dim=2, steps=4,
                    constants=False)
    keys = set(train(vae, load_dataset(vae, progress=False), progress=False).summary)
    keys |= set(train_bbvi(BBVIConfig(steps=4, constants=False), progress=False).summary)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(32, 3)

    def loss(m, xb):
        return (m(xb) ** 2).squeeze(-1)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = ConvergenceMonitor(model, loss, x, 4, optimizer=optimizer, batch_size=8)
    for _ in range(4):
        optimizer.zero_grad()
        loss(model, x[torch.randint(0, 32, (8,))]).mean().backward()
        optimizer.step()
    keys |= set(monitor.summary())
    assert keys == set(SUMMARY_KEYS)


def test_reproduce_with_bad_data_says_why_at_once_and_writes_nothing(tmp_path, capsys):
    data = np.random.default_rng(0).random((200, 8)).astype(np.float32)
    data[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", data)
    out = tmp_path / "out"
    err = refused(["reproduce", "--quick", "--data", tmp_path / "nan.npy", "--out", out, "--quiet"], capsys)
    assert "--data:" in err and "NaN" in err
    assert not out.exists()


def test_a_sweep_says_why_its_runs_failed(tmp_path, capsys):
    spec = tmp_path / "conv.toml"
    spec.write_text('[base]\nsteps = 4\nmodel = "conv32"\n[grid]\nlr = [0.001, 0.002]\n')
    assert main(["sweep", str(spec), "--store", str(tmp_path / "s.db"), "--jobs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 runs failed: ConfigError: --model: conv32 takes 3x32x32 images" in err


@pytest.mark.parametrize("command", ["report", "reproduce"])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP + "[grid]\nlr = [0.001]\n")
    assert main(["sweep", str(spec), "--store", str(tmp_path / "s.db"), "--jobs", "1", "--quiet"]) == 0
    capsys.readouterr()
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    argv = ["report", tmp_path / "s.db"] if command == "report" else ["reproduce", "--quick"]
    for out in (blocker, blocker / "sub"):
        err = refused([*argv, "--out", out], capsys)
        assert err.startswith(f"vaeconverge {command}: error: --out:"), err
    assert blocker.read_text() == "keep me"


def test_runtime_sizes_read_as_people_write_them():
    assert runtime._size(512) == "512 B" and runtime._size(1.5 * 2**30) == "1.5 GiB"
    assert runtime._size(2**70) == "1.02e+03 EiB"


def test_output_checks_never_create_the_folder(tmp_path: Path, capsys):
    out = tmp_path / "a" / "b"
    err = refused([*TINY, "--beta", "inf", "--out", out], capsys)
    assert "--beta" in err and not (tmp_path / "a").exists()


@pytest.mark.parametrize("option", ["--samples", "--eval-samples"])
def test_bbvi_too_large_for_memory_is_refused_with_its_estimate(tmp_path, capsys, option):
    err = refused(["bbvi", option, "1000000000", "--steps", "4", "--out", tmp_path / "b"], capsys)
    assert err.startswith("vaeconverge bbvi: error: --samples:") and "variational draws" in err and "needs about" in err

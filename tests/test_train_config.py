"""`vaeconverge train --config run.toml`: the options of a sweep's [base] table read from a file, read as the sweep
reads them; the options typed on the command line, and only those, override the file; a bad key or value is one
line naming it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from vaeconverge.api import read_config
from vaeconverge.cli import main
from vaeconverge.cli.main import build_parser, config_from_args
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.sweeps import load_spec

EXPERIMENTS = sorted((Path(__file__).parents[1] / "src" / "vaeconverge" / "experiments").glob("*.toml"))

RUN_FILE = """\
data = "synthetic-linear"
model = "linear"
likelihood = "gaussian"
latent-dim = 2
lr = 0.01
steps = 12
eval_every = 6
seeds = 2
adam_betas = [0.8, 0.99]
constants = false

[synthetic]
n_samples = 90
data_dim = 4
"""


def config_of(*argv: object) -> RunConfig:
    return config_from_args(build_parser().parse_args(["train", *map(str, argv)]))


@pytest.fixture
def run_file(tmp_path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(RUN_FILE)
    return path


def test_the_file_gives_the_options_and_the_rest_keep_their_defaults(run_file):
    config = config_of("--config", run_file)
    assert config == dataclasses.replace(
        RunConfig(), data="synthetic-linear", model="linear", likelihood="gaussian", latent_dim=2, lr=0.01, steps=12,
        eval_every=6, seeds=(0, 1), adam_betas=(0.8, 0.99), constants=False,
        synthetic=dataclasses.replace(RunConfig().synthetic, n_samples=90, data_dim=4))


def test_typed_options_override_the_file_even_at_their_defaults(run_file):
    """--lr 0.001 is the default, typed: it replaces the file's 0.01; what is not typed stays the file's."""
    config = config_of("--config", run_file, "--lr", "0.001", "--n-samples", "100", "--learn-variance",
                       "--seeds", "3", "--seed", "5")
    assert (config.lr, config.synthetic.n_samples, config.synthetic.data_dim) == (0.001, 100, 4)
    assert config.learn_variance and config.seeds == (5, 6, 7) and config.steps == 12
    assert config_of("--config", run_file, "--no-constants").constants is False
    assert config_of("--lr", "0.001") == config_of()  # without --config, the parsed defaults as before


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda path: path.stem)
def test_a_sweeps_base_table_is_a_run_file(tmp_path, experiment):
    """The [base] table of every shipped study, as a run file, is the configuration the sweep reads from it."""
    spec = load_spec(experiment)
    if spec.kind != "vae":
        pytest.skip("a bbvi study")
    table = re.search(r"^\[base\]\n(.*?)(?=^\[|\Z)", experiment.read_text(), re.S | re.M).group(1)
    path = tmp_path / "base.toml"
    path.write_text(table)
    try:
        from_sweep = RunConfig.from_dict({**spec.base, "seeds": []}).validate()
    except ConfigError as exc:  # a base that only its axes complete: refused alike
        with pytest.raises(ConfigError, match=re.escape(exc.problem)):
            read_config(path)
    else:
        assert dataclasses.replace(read_config(path), seeds=()) == from_sweep


def test_a_run_trains_from_the_file(tmp_path, run_file, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(run_file), "--steps", "6", "--out", str(out), "--quiet"]) == 0
    recorded = json.loads((out / "summary.json").read_text())["config"]
    assert recorded == dataclasses.replace(config_of("--config", run_file), steps=6).to_dict()


@pytest.mark.parametrize(("text", "words"), [
    ("latent_dm = 2\n", ["latent_dm", "not an option", "latent_dim"]),
    ("batch_size = -3\n", ["batch_size", "must be positive"]),
    ("model = 'transformer'\n", ["model", "transformer"]),
    ("adam_betas = 0.9\n", ["adam_betas", "list"]),
    ("synthetic = 5\n", ["synthetic", "table"]),
    ("[synthetic]\nn_sample = 5\n", ["n_sample", "not an option of the synthetic data"]),
    ("steps = \n", ["not valid TOML"]),
])
def test_a_bad_key_or_value_is_one_line_naming_it(tmp_path, capsys, text, words):
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "out").exists()


def test_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.toml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err and "none.toml" in err

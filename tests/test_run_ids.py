"""Run identity: identifiers of existing configurations never change, an option added with a default leaves
every identifier as it was, and a store of finished runs made by an older version is recognised in full."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from vaeconverge.bbvi.config import BBVIConfig
from vaeconverge.config import RunConfig, SyntheticConfig
from vaeconverge.sweeps import Outcome, Store, load_spec, run_id, run_sweep
from vaeconverge.sweeps.grid import Config, config_from_dict
from vaeconverge.sweeps.identity import SCHEMA_1, identity
from vaeconverge.sweeps.store import BIASED_ERA_NOTE

FIXTURES = Path(__file__).parent / "fixtures"
SPECS = (FIXTURES / "sweep-v1-vae.toml", FIXTURES / "sweep-v1-bbvi.toml")

# The compatibility oracle: these identifiers were computed by the schema-1 formula (the SHA-256 of every
# option of to_dict() but threads, denormals and data_dir, as JSON with sorted keys), with the code of the
# commit before run identity learnt to ignore new options at their defaults. They must never change.
KNOWN_IDS = [
    (RunConfig(activation="relu", optimizer="adam"), "6a9e5dbd8dd1d0f9"),  # the defaults then
    (BBVIConfig(optimizer="adam"), "f3664a18f95bcf4d"),
    (RunConfig(seeds=(0, 1, 2), batch_size=16, optimizer="sgd", lr=0.05, activation="relu"), "ceb6fdfad556f13e"),
    (RunConfig(data="synthetic-linear", synthetic=SyntheticConfig(n_samples=200, noise_std=0.1), model="linear",
               likelihood="gaussian", decoder_std=0.5, adam_betas=(0.8, 0.99), activation="relu", optimizer="adam"),
     "1a3fe5079c9f4855"),
    (BBVIConfig(target="logistic-regression", family="planar-flow", samples=8, batch_size=64, seeds=(0, 1, 2),
                lr=1e-3, optimizer="sgd"), "725d8172d2a5e27b"),
]


@pytest.mark.parametrize(("config", "expected"), KNOWN_IDS, ids=[expected for _, expected in KNOWN_IDS])
def test_existing_configurations_keep_their_schema_1_ids(config, expected):
    assert run_id(config) == expected


def test_today_s_defaults_name_new_runs():
    """ReLU and torch's Adam were the defaults when the identifiers were fixed; soft-clipping and the analysed
    Adam compute something else, so a configuration that leaves them unset is a run no old store holds."""
    assert run_id(RunConfig()) != run_id(RunConfig(activation="relu", optimizer="adam")) == KNOWN_IDS[0][1]
    assert run_id(BBVIConfig()) != run_id(BBVIConfig(optimizer="adam")) == KNOWN_IDS[1][1]


def test_schema_1_tables_are_todays_options():
    """Every option of today's classes is in its schema-1 table but those added since, which must not be added
    there."""
    added_since = {"device", "alpha", "estimator", "snr", "snr_draws", "precision"}
    assert SCHEMA_1[RunConfig] == set(RunConfig().to_dict()) - added_since
    assert SCHEMA_1[BBVIConfig] == set(BBVIConfig().to_dict()) - {"device", "snr", "snr_draws"}
    assert SCHEMA_1[SyntheticConfig] == {f.name for f in dataclasses.fields(SyntheticConfig)}


# Versions of the configuration classes with one option added, its default keeping the old behaviour.
RunConfigV2 = dataclasses.make_dataclass("RunConfigV2", [("tempering", float, dataclasses.field(default=0.0))],
                                         bases=(RunConfig,), frozen=True)
BBVIConfigV2 = dataclasses.make_dataclass("BBVIConfigV2", [("tempering", float, dataclasses.field(default=0.0))],
                                          bases=(BBVIConfig,), frozen=True)


@dataclasses.dataclass(frozen=True)
class SyntheticConfigV2(SyntheticConfig):
    outlier_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class RunConfigV2Nested(RunConfig):
    """A new nested option and a new top-level nested configuration, both at defaults by default."""

    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfigV2)
    extra: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)


@pytest.mark.parametrize(("old", "new"), [
    (RunConfig, RunConfigV2),
    (BBVIConfig, BBVIConfigV2),
])
@pytest.mark.parametrize("options", [{}, {"seeds": (0, 1), "lr": 0.05, "steps": 100}])
def test_a_new_option_at_its_default_leaves_ids_unchanged(old, new, options):
    before = old(**options)
    assert run_id(new(**options)) == run_id(before)
    assert run_id(new(**options, tempering=0.0)) == run_id(before)
    changed = run_id(new(**options, tempering=0.5))
    assert changed != run_id(before)
    assert changed == run_id(new(**options, tempering=0.5))  # deterministic
    assert changed != run_id(new(**options, tempering=0.25))


def test_a_new_nested_option_at_its_default_leaves_ids_unchanged():
    sizes = {"n_samples": 200, "noise_std": 0.1}
    before = RunConfig(data="synthetic-linear", synthetic=SyntheticConfig(**sizes))
    after = RunConfigV2Nested(data="synthetic-linear", synthetic=SyntheticConfigV2(**sizes))
    assert "outlier_fraction" in after.to_dict()["synthetic"] and "extra" in after.to_dict()
    assert run_id(after) == run_id(before)
    old_defaults = {"activation": "relu", "optimizer": "adam"}
    assert run_id(RunConfigV2Nested(**old_defaults)) == run_id(RunConfig(**old_defaults)) == KNOWN_IDS[0][1]
    outliers = dataclasses.replace(after, synthetic=SyntheticConfigV2(**sizes, outlier_fraction=0.1))
    assert run_id(outliers) != run_id(before)
    assert identity(outliers)["synthetic"] == {**identity(before)["synthetic"], "outlier_fraction": 0.1}
    # a schema-1 option inside the nested configuration always counts, as before
    assert run_id(dataclasses.replace(after, synthetic=SyntheticConfigV2(n_samples=300))) != run_id(before)
    # a new nested configuration counts only where it differs from its default, and then only what differs
    extra = dataclasses.replace(after, extra=SyntheticConfig(seed=3))
    assert run_id(extra) != run_id(before)
    assert identity(extra)["extra"] == dataclasses.asdict(SyntheticConfig(seed=3))


@pytest.mark.parametrize("config", [RunConfig(), BBVIConfig(), RunConfigV2(tempering=0.5),
                                    BBVIConfigV2(tempering=0.5)])
def test_execution_only_options_do_not_change_the_id(config):
    names = {f.name for f in dataclasses.fields(config)}
    varied = {"threads": 3, "denormals": "keep"} | ({"data_dir": "/elsewhere"} if "data_dir" in names else {})
    assert run_id(dataclasses.replace(config, **varied)) == run_id(config)
    assert not set(varied) & set(identity(config))


def test_ids_are_16_hex_digits():
    for config, _ in KNOWN_IDS:
        identifier = run_id(config)
        assert len(identifier) == 16 and int(identifier, 16) >= 0 and identifier == identifier.lower()


def test_the_fixture_store_holds_schema_1_ids():
    """Each run of the fixture store is named by run_id of the configuration it stores."""
    with sqlite3.connect(FIXTURES / "store-v1.db") as db:
        rows = list(db.execute("SELECT id, config, status FROM runs"))
    db.close()
    assert len(rows) == 4 and {status for _, _, status in rows} == {"done"}
    for identifier, config, _ in rows:
        assert run_id(config_from_dict(json.loads(config))) == identifier


class Recording:
    """An executor that trains nothing: it records the runs it is asked to execute and fails each."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Config]] = []

    def run(self, tasks: Iterable[tuple[str, Config]], started: Callable[[str], None]) -> Iterator[Outcome]:
        for identifier, config in tasks:
            self.asked.append((identifier, config))
            started(identifier)
            yield Outcome(identifier, "failed", 0.0, error="the fixture's runs were to be recognised as finished")


def test_a_store_made_by_schema_1_is_recognised_and_nothing_is_retrained(tmp_path):
    db = tmp_path / "store-v1.db"
    shutil.copyfile(FIXTURES / "store-v1.db", db)
    executor = Recording()
    with Store(db) as store:
        for path in SPECS:
            spec = load_spec(path)
            counts = run_sweep(spec, store, executor, progress=False)
            assert counts == {"queued": 0, "running": 0, "done": 2, "failed": 0, "diverged": 0}, spec.name
            assert [run.status for run in store.runs(spec.name)] == ["done", "done"]
            assert all(run.summary is not None and store.metrics(run.id) for run in store.runs(spec.name))
        assert executor.asked == []  # not one run retrained
        assert store.counts() == {"queued": 0, "running": 0, "done": 4, "failed": 0, "diverged": 0}


def test_the_recording_executor_would_see_a_retrained_run(tmp_path):
    """The check above can fail: a run the store does not hold reaches the executor."""
    executor = Recording()
    with Store(tmp_path / "r.db") as store:
        spec = load_spec(SPECS[1])
        counts = run_sweep(spec, store, executor, progress=False)
    assert counts["failed"] == 2 and [identifier for identifier, _ in executor.asked] == list(map(run_id, spec.runs()))


def test_a_new_option_at_its_default_still_finds_the_stored_runs(tmp_path, monkeypatch):
    """The fixture's sweeps, expanded into configurations of a class with one more option, are the stored runs."""
    import vaeconverge.sweeps.grid as grid

    db = tmp_path / "store-v1.db"
    shutil.copyfile(FIXTURES / "store-v1.db", db)
    monkeypatch.setitem(grid.KINDS, "vae", RunConfigV2)
    monkeypatch.setitem(grid.KINDS, "bbvi", BBVIConfigV2)
    executor = Recording()
    with Store(db) as store:
        for path in SPECS:
            spec = load_spec(path)
            assert all(type(config).__name__.endswith("V2") for config in spec.runs())
            assert run_sweep(spec, store, executor, progress=False)["done"] == 2
    assert executor.asked == []



def test_a_store_from_before_the_unbiased_estimator_keeps_its_reading_under_its_own_name(tmp_path):
    """Opening moves the stored single-replicate reading to grad_sq_norm_biased and says so in each summary;
    grad_sq_norm, which now means the unbiased estimate, is absent (NaN) rather than mislabelled."""
    db = tmp_path / "store-v1.db"
    shutil.copyfile(FIXTURES / "store-v1.db", db)
    with sqlite3.connect(db) as raw:
        before = {(run_id, seed, step): value for run_id, seed, step, value
                  in raw.execute("SELECT run_id, seed, step, grad_sq_norm FROM metrics")}
    raw.close()
    assert before and all(value is not None for value in before.values())
    with Store(db) as store:
        for spec_path in SPECS:
            for run in store.runs(load_spec(spec_path).name):
                assert run.summary["grad_sq_norm_estimator"] == BIASED_ERA_NOTE
                assert run.summary["grad_sq_norm"] is None and run.summary["grad_sq_norm_biased"] > 0
                for row in store.metrics(run.id):
                    assert math.isnan(row["grad_sq_norm"]) and math.isnan(row["kl"])
                    assert row["grad_sq_norm_biased"] == before[(run.id, row["seed"], row["step"])]
    with Store(db) as store:  # a second opening changes nothing more
        run = store.runs(load_spec(SPECS[0]).name)[0]
        assert store.metrics(run.id)[0]["grad_sq_norm_biased"] == before[(run.id, 0.0, 0.0)]

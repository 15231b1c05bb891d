"""``sweep --tensorboard DIR``: each finished run is a TensorBoard run DIR/RUN_ID whose HParams data hold the
sweep's varied options and the run's final readings, read back as TensorBoard reads them. (``train``'s one run
per seed is tested in test_cli.py, the monitor's in test_monitor.py.)"""

from __future__ import annotations

import pytest
from conftest import tiny_sweep

from vaeconverge.cli import main
from vaeconverge.sweeps import Store

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

SWEEP = tiny_sweep(20, 10, 'batch_size = [16, 32]\noptimizer = ["sgd", "adam"]\n')


def hparams_of(events: EventAccumulator) -> dict[str, object]:
    """The hyperparameters of a run's HParams session, as the HParams tab reads them."""
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in info.hparams.items()}


def test_each_finished_run_carries_its_axes_and_final_readings(tmp_path):
    spec, store, logs = tmp_path / "tiny.toml", tmp_path / "r.db", tmp_path / "tb"
    spec.write_text(SWEEP)
    assert main(["sweep", str(spec), "--store", str(store), "--jobs", "1", "--quiet", "--tensorboard",
                 str(logs)]) == 0
    with Store(store, readonly=True) as results:
        stored = results.runs("tiny")
        assert sorted(p.name for p in logs.iterdir()) == sorted(run.id for run in stored)
        for run in stored:
            events = EventAccumulator(str(logs / run.id))
            events.Reload()
            assert hparams_of(events) == {"batch_size": run.config.batch_size, "optimizer": run.config.optimizer}
            (reading,) = events.Scalars("summary/grad_sq_norm")
            assert reading.value == pytest.approx(run.summary["grad_sq_norm"], rel=1e-6)
            assert reading.step == 20
            curve = [(e.step, e.value) for e in events.Scalars("objective")]
            expected = [(int(r["step"]), r["objective"]) for r in results.metrics(run.id)]
            assert [s for s, _ in curve] == [s for s, _ in expected]
            assert [v for _, v in curve] == pytest.approx([v for _, v in expected], rel=1e-6)

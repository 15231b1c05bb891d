"""A run's scalars as TensorBoard events, when tensorboard is installed (``pip install 'vaeconverge[tensorboard]'``):
``train --tensorboard DIR`` writes one TensorBoard run per seed (``DIR/seed-S``) and, for several seeds, their mean
(``DIR/mean``), so that the seeds overlay in one chart per scalar; ``sweep --tensorboard DIR`` writes one run per
finished run (``DIR/RUN_ID``) with its varied hyperparameters and final readings, which the HParams tab compares.

Which scalars a run exposes is :mod:`.scalars`'s, shared with MLflow logging (:mod:`.mlflow_log`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from .scalars import final_readings, run_curve, scalars, series

if TYPE_CHECKING:
    from ..sweeps import Outcome
    from ..sweeps.grid import Config

INSTALL = "pip install 'vaeconverge[tensorboard]'"


def require_tensorboard() -> None:
    """Raise :class:`ConfigError` naming ``--tensorboard`` unless the tensorboard package can be imported."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard", f"needs the tensorboard package, which is not installed ({INSTALL})")


def write_scalars(log_dir: str | Path, metrics: Sequence[dict[str, float]]) -> Path:
    """Write each of :func:`series` as a TensorBoard run ``log_dir/NAME``: every finite scalar at its step."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    for name, rows in series(metrics).items():
        with SummaryWriter(log_dir=str(Path(log_dir) / name)) as writer:
            _add_rows(writer, rows)
    return Path(log_dir)


def hparams_writer(log_dir: str | Path, axes: Sequence[str]) -> Callable[[Config, Outcome], None]:
    """For ``sweep --tensorboard``: a callback ``(config, outcome)`` that writes a finished run as the TensorBoard
    run ``log_dir/RUN_ID``: its curve (:func:`run_curve`), and ``axes``' values as hyperparameters with its
    :func:`final_readings` as their metrics."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    def write(config: Config, outcome: Outcome) -> None:
        values = config.to_dict()
        hparams = {axis: _hparam(values[axis]) for axis in axes}
        rows = run_curve(outcome.metrics)
        with SummaryWriter(log_dir=str(Path(log_dir) / outcome.run_id)) as writer:
            _add_rows(writer, rows)
            writer.add_hparams(hparams, final_readings(outcome.summary), run_name=".",
                               global_step=int(rows[-1]["step"]))

    return write


def _add_rows(writer: Any, rows: Sequence[dict[str, float]]) -> None:
    for row in rows:
        for key, value in scalars(row).items():
            writer.add_scalar(key, value, int(row["step"]))


def _hparam(value: Any) -> bool | int | float | str:
    """A configuration value as TensorBoard takes a hyperparameter: a number, boolean or string (else its text)."""
    return value if isinstance(value, bool | int | float | str) else str(value)

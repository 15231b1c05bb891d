"""The Python API: :func:`fit` trains a VAE, one replica per seed, and returns a :class:`Run`, which plots and saves
itself; :func:`load_run` reads a saved run back. ``vaeconverge train`` is this API behind command-line flags."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .config import RunConfig, list_options
from .data import array_dataset, load_dataset
from .engine import TrainResult, train
from .engine.checkpoint import load_replicas, write_checkpoint
from .engine.outputs import read_run
from .models import VAE
from .report.figures import run_figure
from .report.run_folder import FinishedRun, check_output_folder, write_run
from .validation import ConfigError

IN_MEMORY = "array"  # ``data`` of a run fitted on an array in memory: its configuration cannot reload the array

DataLike = str | os.PathLike[str] | np.ndarray | torch.Tensor


def run_config(config: RunConfig | None = None, **options: Any) -> RunConfig:
    """A run's configuration: ``config`` with ``options`` in place of its fields, validated.

    Args:
        config: The options to start from; every default if None.
        **options: :class:`RunConfig` fields. ``seeds`` may also be a count T, meaning seeds ``seed`` to
            ``seed + T - 1`` (as ``--seeds T``), or None for ``seed`` alone; ``synthetic`` may be a dict of
            the :class:`SyntheticConfig` fields to change.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: A name that is no option (every such name listed), or an invalid value.
    """
    base = RunConfig() if config is None else config
    if not isinstance(base, RunConfig):
        raise ConfigError("config", f"expected a RunConfig, got {type(base).__name__} (pass the data as data=...)")
    _check_names(RunConfig, options, "a run")
    if isinstance(options.get("synthetic"), dict):
        _check_names(type(base.synthetic), options["synthetic"], "the synthetic data")
        options["synthetic"] = dataclasses.replace(base.synthetic, **options["synthetic"])
    if "seeds" in options:
        options["seeds"] = _seed_list(options["seeds"], options.get("seed", base.seed))
    return dataclasses.replace(base, **list_options(options)).validate()


def _check_names(cls: type, options: dict[str, Any], what: str) -> None:
    """Raise :class:`ConfigError` naming every key of ``options`` that is not a field of the dataclass ``cls`` (the
    options of ``what``), with the nearest field names as a hint."""
    fields = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        near = [match for name in unknown for match in difflib.get_close_matches(name, fields, n=1)]
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ConfigError(", ".join(unknown), f"not {'options' if len(unknown) > 1 else 'an option'} of {what}{hint}")


def _seed_list(seeds: Any, seed: Any) -> Any:
    """``seeds`` as the list of replica seeds: a count T from ``seed`` on, None as none beyond ``seed``; any other
    value is left to the configuration's checks."""
    if seeds is None:
        return ()
    if isinstance(seeds, bool) or not isinstance(seeds, int):
        return seeds
    if seeds < 1:
        raise ConfigError("--seeds", f"a count of seeds must be at least 1 (got {seeds})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("--seed", f"must be an integer (got {seed!r})")
    return tuple(range(seed, seed + seeds))


def fit(config: RunConfig | None = None, data: DataLike | None = None, *, progress: bool = True,
        **options: Any) -> Run:
    """Train a VAE, one replica per seed in a single pass, measuring its convergence as ``vaeconverge train`` does.

    Args:
        config: The run's options; every default if None.
        data: What to train on: a data set's name ("digits", "synthetic-linear", "mnist", ...), the path of an
            N x D ``.npy``, ``.npz`` or ``.csv`` file, or an (N, D) numpy array or torch tensor (used as float32).
            None: ``config.data``.
        progress: Show a progress bar.
        **options: :class:`RunConfig` fields replacing ``config``'s, e.g. ``steps=500, seeds=3``
            (see :func:`run_config`).

    Returns:
        The trained run.

    Raises:
        ConfigError: An unknown option, an invalid value, or data unusable as asked; the message names which.
        TrainingDiverged: The objective of a replica stopped being finite.
    """
    array = None
    if isinstance(data, str | os.PathLike):
        options["data"] = os.fspath(data)
    elif data is not None:
        array, options["data"] = data, IN_MEMORY
    config = run_config(config, **options)
    if array is not None:
        dataset = array_dataset(array, config)
    elif config.data == IN_MEMORY:
        raise ConfigError("data", "this configuration was fitted on an array in memory; pass it again as data=...")
    else:
        dataset = load_dataset(config, progress=progress)
    return Run.from_result(train(config, dataset, progress=progress))


class Run:
    """A trained run: its configuration, its models (one per seed), its measurements and their summary.

    Made by :func:`fit` or :func:`load_run`. A fitted run and the same run saved and loaded again hold equal
    ``metrics`` and ``summary``, but for numbers that are not finite, which JSON writes as None.

    Attributes:
        config: The run's validated options.
        metrics: One row per seed and checkpoint, column name to number, as ``metrics.csv`` holds them.
        summary: The run's summary, the content of ``summary.json``.
    """

    def __init__(self, config: RunConfig, replicas: Callable[[], list[VAE]], metrics: list[dict[str, float]],
                 summary: dict[str, Any], written: FinishedRun) -> None:
        self.config = config
        self.metrics = metrics
        self.summary = summary
        self._replicas = replicas  # builds ``models`` when first asked: a run saved and never used copies none
        self._written = written  # what :meth:`save` writes: the run as trained, whatever becomes of ``models``

    @classmethod
    def from_result(cls, result: TrainResult) -> Run:
        """The run :func:`vaeconverge.engine.train` returned."""
        def replicas() -> list[VAE]:
            return [result.ensemble.replica(t) for t in range(len(result.config.replica_seeds))]

        return cls(result.config, replicas, result.metrics, result.summary, result)

    @cached_property
    def models(self) -> list[VAE]:
        """The trained VAEs, one per seed, in the order of ``config.replica_seeds``."""
        return self._replicas()

    @property
    def model(self) -> VAE:
        """The first seed's model (the only one of a single-seed run)."""
        return self.models[0]

    def plot(self) -> Figure:
        """The run's convergence figure, as ``convergence.png`` shows it.

        Returns:
            A matplotlib figure of two panels, the squared gradient norm and the objective against iteration; it
            is not registered with pyplot (a notebook shows it once; ``fig.savefig`` writes it).
        """
        return run_figure(self.metrics, self.summary)

    def save(self, directory: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the run folder ``vaeconverge train`` writes: metrics.csv, bands.csv, summary.json, convergence.png
        and checkpoint.pt (the weights as trained, and the optimizer's state).

        Args:
            directory: The folder, created if needed.
            overwrite: Replace a run already in ``directory``.

        Returns:
            The folder written.

        Raises:
            ConfigError: ``directory`` is a file, holds a run (without ``overwrite``) or cannot be written.
        """
        out = Path(directory)
        check_output_folder(out, "directory", overwrite=overwrite, overwrite_option="overwrite=True")
        return write_run(out, self._written)

    def __repr__(self) -> str:
        seeds = self.config.replica_seeds
        return (f"Run({self.config.model} VAE on {self.summary['data']['name']}, seeds {list(seeds)}, "
                f"{self.summary['steps']} steps, objective {self.summary.get('objective')})")


@dataclass(frozen=True)
class _StoredRun:
    """A run read from its folder, written again as it was read."""

    metrics: list[dict[str, float]]
    summary: dict[str, Any]
    checkpoint: dict[str, Any]

    def save_checkpoint(self, path: str | Path) -> None:
        write_checkpoint(path, self.checkpoint)


def load_run(directory: str | os.PathLike[str], device: str = "cpu") -> Run:
    """Read back a run folder written by :meth:`Run.save` or ``vaeconverge train``.

    Args:
        directory: The run folder.
        device: Where the models go: cpu, cuda or auto (CUDA where available), whatever device trained them.

    Returns:
        The run, its models rebuilt from checkpoint.pt.

    Raises:
        RunFolderError: The folder, its metrics.csv or its summary.json is missing or damaged.
        CheckpointError: checkpoint.pt is missing, damaged or not a VAE training run's.
    """
    metrics, summary = read_run(directory)
    models, config, checkpoint = load_replicas(Path(directory) / "checkpoint.pt", device)
    return Run(config, lambda: models, metrics, summary, _StoredRun(metrics, summary, checkpoint))

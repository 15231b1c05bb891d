"""The Python API: :func:`fit` trains a VAE, one replica per seed, and returns a :class:`Run`, which plots and saves
itself; :func:`load_run` reads a saved run back, :func:`resume` continues it, and :func:`read_config` reads a run's
options from a TOML file. ``vaeconverge train`` is this API behind command-line flags."""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
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
from .engine.checkpoint import load_replicas, load_resumable, write_checkpoint
from .engine.outputs import read_run
from .engine.train import data_digest, dataset_facts
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


def read_config(path: str | os.PathLike[str]) -> RunConfig:
    """A run's configuration from a TOML file of the keys a sweep's ``[base]`` table takes: :class:`RunConfig`'s
    fields (dashes or underscores), ``seeds`` a count or a list, and a ``[synthetic]`` table of the synthetic data's
    sizes; every option not given keeps its default.

    Raises:
        ConfigError: The file cannot be read or is not TOML, a key is no option, or a value is invalid; the message
            names the file and the key.
    """
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not text (byte {exc.start} is not UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    options = {key.replace("-", "_"): value for key, value in values.items()}
    if not isinstance(options.get("synthetic", {}), dict):
        raise ConfigError(f"{path}: synthetic", "must be a table of the synthetic data's sizes ([synthetic])")
    try:
        return run_config(**options)
    except ConfigError as exc:
        key = exc.option.removeprefix("--").replace("-", "_")
        raise ConfigError(f"{path}: {key if key in options else exc.option}", exc.problem) from None


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


def resume(directory: str | os.PathLike[str], steps: int | None = None, *, data: DataLike | None = None,
           progress: bool = True, **options: Any) -> Run:
    """Continue the run saved in ``directory`` (by ``vaeconverge train`` or :meth:`Run.save`) up to ``steps`` steps in
    all, as it would have gone on had it never stopped.

    It goes on from checkpoint.pt with everything its loop depends on: the weights, the optimizer and the schedule,
    each replica's batch order and random streams, and the measurements so far with their clock. It keeps every
    checkpoint it measured, and after its last step n1 it evaluates where a run of ``steps`` steps would; its
    constants are those probed where that run probes them (at 0, steps / 2 and steps), or, where steps / 2 fell
    before n1 unprobed, every probe taken (more probes err on the safe side). So it equals the run trained straight
    to ``steps`` when the two evaluated at the same steps up to n1 (as with ``eval_every`` E and n1 a multiple of
    E) and ``steps`` is at least 2 n1.

    Args:
        directory: The run folder. Nothing in it changes: save the continued run (``Run.save(directory,
            overwrite=True)`` updates it in place).
        steps: The new total; None: the run's own ``steps`` (which finishes an interrupted run).
        data: As :func:`fit` takes it: a run fitted on an array in memory needs the array again; any other run
            reads its own data again (checked to have the shape it had), and a name or path given must be its own.
        progress: Show progress.
        **options: :class:`RunConfig` fields the caller states (as :func:`run_config` takes them); each must be the
            run's own, which a resumed run keeps.

    Returns:
        The continued run.

    Raises:
        CheckpointError: checkpoint.pt is missing, damaged, or holds no loop state.
        ConfigError: ``steps`` is not above the run's, an option differs from the run's, or the data do.
        TrainingDiverged: The objective of a replica stopped being finite.
    """
    state, config = load_resumable(Path(directory) / "checkpoint.pt")
    done = state["step"]
    if isinstance(data, str | os.PathLike):
        options["data"], data = os.fspath(data), None
    asked = run_config(config, **options, **({} if steps is None else {"steps": steps}))
    for field in dataclasses.fields(RunConfig):
        if field.name != "steps" and getattr(asked, field.name) != getattr(config, field.name):
            raise ConfigError("--" + field.name.replace("_", "-"),
                              f"the run in {directory} has {getattr(config, field.name)!r}; a resumed run keeps its "
                              "configuration (only --steps, the new total, changes)")
    if asked.steps <= done:
        raise ConfigError("--steps", f"the run in {directory} is already at {done} steps"
                          + ("; give a larger total" if steps is None else f" (got {steps}, the new total)"))
    if config.data == IN_MEMORY:
        if data is None:
            raise ConfigError("data", "this run was fitted on an array in memory; pass it again as data=...")
        dataset = array_dataset(data, asked)
    elif data is not None:
        raise ConfigError("data", f"this run reads its data ({config.data}) itself; an array is for a run fitted on "
                                  "an array in memory")
    else:
        dataset = load_dataset(asked, progress=progress)
    trained_on, now = state["loop"]["data"], {**dataset_facts(dataset), "digest": data_digest(dataset)}
    if (now["n"], now["dim"]) != (trained_on["n"], trained_on["dim"]):
        raise ConfigError("--data", f"the data read now ({now['n']} x {now['dim']}) are not those the run trained on "
                                    f"({trained_on['n']} x {trained_on['dim']}); a run resumes on its own data")
    if now["digest"] != trained_on.get("digest"):
        raise ConfigError("--data", f"the data read now ({config.data}) hold other values than those the run "
                                    "trained on; a run resumes on its own data")
    return Run.from_result(train(asked, dataset, progress=progress, resume_from=state))


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

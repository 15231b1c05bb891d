"""Checkpoints: written atomically (temporary file, then rename), read with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, RunConfig
from ..models import VAE, build_vae
from ..runtime import resolve_device

FORMAT = "vaeconverge-checkpoint-2"  # 2: one state dict per replica, with the replicas' seeds


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not one of ours; the message names the file."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path``; a crash leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; outputs follow the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | Path,
    format: str,
    config: dict[str, Any],
    step: int,
    seeds: Sequence[int],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    **weights: Any,
) -> None:
    """Save what rebuilds a run's replicas (``weights``: their state dicts, and what shapes them) and resumes its
    (stacked) optimizer, marked with ``format``: one writer for every kind of run."""
    state = {
        "format": format,
        "config": config,
        "step": step,
        "seeds": list(seeds),
        **weights,
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": scheduler.last_epoch},
    }
    write_checkpoint(path, state)


def write_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint's ``state`` (as :func:`save_checkpoint` makes it, or as :func:`load_checkpoint` read
    it) to ``path`` whole or not at all."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, its tensors onto ``device``, without executing pickled code; raise
    :class:`CheckpointError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message suggests loading unsafely: never pass that on
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(f"{path}: refused: it holds code or objects ({found.group(1)}) that a "
                                  "vaeconverge checkpoint never contains; it was not loaded") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(exc))
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint"
                              + (f" ({detail.group(1).strip()})" if detail else "")) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vaeconverge checkpoint")
    return state


def load_model(path: str | Path, seed: int | None = None, device: str = "cpu") -> tuple[VAE, RunConfig]:
    """Rebuild one trained model of a run from its checkpoint.pt.

    Args:
        path: The checkpoint, as ``vaeconverge train`` and :meth:`vaeconverge.Run.save` write it.
        seed: Whose replica; the first seed's if None.
        device: Where the model goes: cpu, cuda or auto (CUDA where available), whatever device wrote it.

    Returns:
        The model and the run's configuration.

    Raises:
        CheckpointError: The file is missing, damaged, not a VAE run's, or holds no replica of ``seed``.
    """
    state, config, target = _read_run_checkpoint(path, device)
    seeds = state["seeds"]
    if seed is not None and seed not in seeds:
        raise CheckpointError(f"{path}: no replica with seed {seed} (seeds: {seeds})")
    return _replica(path, state, config, 0 if seed is None else seeds.index(seed), target), config


def load_replicas(path: str | Path, device: str = "cpu") -> tuple[list[VAE], RunConfig, dict[str, Any]]:
    """Rebuild every trained replica, in the order of the run's seeds, on ``device``; also return the run's
    configuration and the checkpoint as read (saved again, it is the same run)."""
    state, config, target = _read_run_checkpoint(path, device)
    return [_replica(path, state, config, t, target) for t in range(len(state["seeds"]))], config, state


# What the loop state of a checkpoint holds (engine.train), and what its recorder's holds (Recorder.state).
LOOP_KEYS = ("streams", "noise", "device", "recorder", "data")
RECORDER_KEYS = ("metrics", "probes", "epoch_sum", "proxy", "seconds", "diagnostics_seconds")


def load_resumable(path: str | Path) -> tuple[dict[str, Any], RunConfig]:
    """A training run's checkpoint read onto the host, checked to hold what resumes it (its replicas' weights
    fitting its configuration, and the loop's state), and the run's configuration.

    Raises:
        CheckpointError: The file is missing, damaged, not a VAE run's, or written without the loop's state (by a
            vaeconverge that could not resume runs).
    """
    state, config, target = _read_run_checkpoint(path, "cpu")
    for t in range(len(state["seeds"])):
        _replica(path, state, config, t, target)
    loop = state.get("loop")
    if not loop:
        raise CheckpointError(f"{path}: holds no loop state to resume from (written by an earlier vaeconverge)")
    missing = [key for key in LOOP_KEYS if key not in loop] or [key for key in RECORDER_KEYS
                                                                 if key not in loop["recorder"]]
    if missing or len(loop["streams"]) != len(state["seeds"]) or not loop["recorder"]["metrics"]:
        raise CheckpointError(f"{path}: incomplete loop state" + (f", missing {missing[0]!r}" if missing else ""))
    return state, config


def _read_run_checkpoint(path: str | Path, device: str) -> tuple[dict[str, Any], RunConfig, torch.device]:
    """A training run's checkpoint read onto ``device``, checked to hold what rebuilds its replicas; its validated
    configuration; the device."""
    target = resolve_device(device)
    state = load_checkpoint(path, target)
    missing = [key for key in ("config", "seeds", "models", "data_dim") if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing[0]!r}")
    try:
        config = RunConfig.from_dict(state["config"]).validate()
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid recorded configuration ({exc})") from exc
    return state, config, target


def _replica(path: str | Path, state: dict[str, Any], config: RunConfig, index: int, device: torch.device) -> VAE:
    """Replica ``index`` of a checkpoint read by :func:`_read_run_checkpoint`, built on ``device``."""
    try:
        model = build_vae(config, state["data_dim"]).to(device)
        model.load_state_dict(state["models"][index])
    except (RuntimeError, IndexError) as exc:
        raise CheckpointError(f"{path}: weights do not match the recorded configuration ({exc})") from exc
    return model

"""Checkpoints: written atomically (temporary file, then rename), read with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, RunConfig
from ..models import VAE, build_vae


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
    model: VAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: RunConfig,
    step: int,
    data_dim: int,
) -> None:
    """Save everything needed to rebuild the model and resume its optimizer."""
    state = {
        "format": "vaeconverge-checkpoint-1",
        "config": config.to_dict(),
        "step": step,
        "data_dim": data_dim,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": scheduler.last_epoch},
    }
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code; raise :class:`CheckpointError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != "vaeconverge-checkpoint-1":
        raise CheckpointError(f"{path}: not a vaeconverge checkpoint")
    return state


def load_model(path: str | Path) -> tuple[VAE, RunConfig]:
    """Rebuild the trained model and its configuration from a checkpoint."""
    state = load_checkpoint(path)
    try:
        config = RunConfig.from_dict(state["config"]).validate()
        model = build_vae(config, state["data_dim"])
        model.load_state_dict(state["model"])
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {exc}") from exc
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid recorded configuration ({exc})") from exc
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the recorded configuration ({exc})") from exc
    return model, config

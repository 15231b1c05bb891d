"""A user's own data: an N x D array in an ``.npy``, ``.npz`` or ``.csv`` file."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..validation import ConfigError

SUFFIXES = (".npy", ".npz", ".csv")
NPZ_KEYS = ("x", "data")


def load_array_file(path: str | Path) -> torch.Tensor:
    """Read the array in ``path`` as float32; errors name the file and what is wrong with it."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError("--data", f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError("--data", f"{path}: no such file")
    try:
        array = _read(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError("--data", f"{path}: cannot read ({exc})") from exc
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ConfigError("--data", f"{path}: expected a real numeric array, found dtype {array.dtype}")
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


def _read(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if len(keys) == 1:
                return archive[keys[0]]
            for key in NPZ_KEYS:
                if key in archive:
                    return archive[key]
            raise ValueError(f"holds arrays {keys}; name the data array one of {NPZ_KEYS}")
    with path.open() as handle:
        header = _is_header(handle.readline())
    with warnings.catch_warnings():  # numpy warns on a file without rows; check_data reports it as empty
        warnings.simplefilter("ignore", UserWarning)
        return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=int(header))


def _is_header(line: str) -> bool:
    """A first CSV line is a header when some field is not a number."""
    try:
        [float(field) for field in line.split(",") if field.strip()]
    except ValueError:
        return True
    return False

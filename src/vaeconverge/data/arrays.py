"""A user's own data: an N x D array in memory (numpy or torch) or in an ``.npy``, ``.npz`` or ``.csv`` file."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..runtime import require_memory
from ..validation import ConfigError

SUFFIXES = (".npy", ".npz", ".csv")
NPZ_KEYS = ("x", "data")


def load_array_file(path: str | Path) -> torch.Tensor:
    """Read the array in ``path`` as float32; errors name the file and what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("--data", f"{path} is a directory; give an N x D {', '.join(SUFFIXES)} file (local data "
                                    "sets are named, e.g. --data mnist, and found under --data-dir)")
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError("--data", f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError("--data", f"{path}: no such file")
    try:
        array = _read(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError("--data", f"{path}: cannot read ({exc})") from exc
    return as_float32_tensor(array, str(path))


def as_float32_tensor(array: np.ndarray | torch.Tensor, source: str) -> torch.Tensor:
    """A user's array (numpy or torch, from ``source``, named in the error) as the float32 host tensor that every
    user data set becomes; a dtype that is not real and numeric is refused."""
    if isinstance(array, torch.Tensor):
        if array.is_complex() or array.dtype == torch.bool:
            raise ConfigError("--data", f"{source}: expected a real numeric array, found dtype {array.dtype}")
        return array.detach().to("cpu", torch.float32)
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ConfigError("--data", f"{source}: expected a real numeric array, found dtype {array.dtype}")
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


def _read(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # the header's shape, before reading
        _require_memory(path, mapped.size, mapped.itemsize)
        return np.array(mapped)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = keys[0] if len(keys) == 1 else next((k for k in NPZ_KEYS if k in archive), None)
            if key is None:
                raise ValueError(f"holds arrays {keys}; name the data array one of {NPZ_KEYS}")
            _require_memory(path, archive.zip.getinfo(f"{key}.npy").file_size, 1)
            return archive[key]
    with path.open() as handle:
        header = _is_header(handle.readline())
    with warnings.catch_warnings():  # numpy warns on a file without rows; check_data reports it as empty
        warnings.simplefilter("ignore", UserWarning)
        return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=int(header))


def _require_memory(path: Path, items: int, itemsize: int) -> None:
    """Refuse an array that would not fit in memory as read and as float32, before reading it."""
    require_memory("--data", items * (itemsize + 4), f"{path}'s array ({items:,} values)")


def _is_header(line: str) -> bool:
    """A first CSV line is a header when some field is not a number."""
    try:
        [float(field) for field in line.split(",") if field.strip()]
    except ValueError:
        return True
    return False

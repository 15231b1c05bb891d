"""Image data sets read from their standard distribution files in a local folder (nothing is downloaded at
run time): MNIST and Fashion-MNIST as idx files, plain or gzipped. The folder is ``--data-dir``, else
``$VAECONVERGE_DATA``, else ``./data``; each set lives in a subfolder named after it (torchvision's
``MNIST/raw`` and ``FashionMNIST/raw`` layouts are found too)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError

IDX_UBYTE = 0x08  # the idx type code of unsigned bytes
IDX_SETS = {  # name -> (subfolders searched, training-image file, image side)
    "mnist": (("mnist", "MNIST/raw"), "train-images-idx3-ubyte", 28),
    "fashion-mnist": (("fashion-mnist", "FashionMNIST/raw"), "train-images-idx3-ubyte", 28),
}
LOCAL_DATA = tuple(IDX_SETS)


def data_root(data_dir: str | None) -> Path:
    """The folder holding the local data sets."""
    return Path(data_dir or os.environ.get("VAECONVERGE_DATA") or "data")


def load_local(name: str, data_dir: str | None) -> torch.Tensor:
    """The training images of data set ``name`` as an (N, pixels) float tensor in [0, 1]."""
    subfolders, stem, side = IDX_SETS[name]
    root = data_root(data_dir)
    candidates = [root / sub / f"{stem}{ext}" for sub in subfolders for ext in ("", ".gz")]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        where = " or ".join(str(root / sub) for sub in subfolders)
        raise ConfigError("--data-dir", f"{name}: no {stem} or {stem}.gz in {where} (the standard idx files of "
                                        f"{name}; set --data-dir or VAECONVERGE_DATA)")
    images = read_idx_images(found)
    if images.shape[1:] != (side, side):
        raise ConfigError("--data", f"{found}: expected {side}x{side} images for {name}, found "
                                    f"{images.shape[1]}x{images.shape[2]}")
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)


def read_idx_images(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes with three dimensions (N, rows, columns), checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:  # EOFError: a gzip stream cut short
        raise ConfigError("--data", f"{path}: cannot be read ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise ConfigError("--data", f"{path}: not an idx file of unsigned bytes (header {data[:4].hex() or 'empty'})")
    dims = data[3]
    if dims != 3:
        raise ConfigError("--data", f"{path}: expected an idx image file with 3 dimensions, found {dims}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise ConfigError("--data", f"{path}: truncated inside its header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ConfigError("--data", f"{path}: truncated or corrupt: its header announces {shape[0]} images of "
                                    f"{shape[1]}x{shape[2]} ({expected} bytes), the file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)

"""Image data sets read from their standard distribution files in a local folder (nothing is downloaded at
run time): MNIST and Fashion-MNIST as idx files, plain or gzipped; CIFAR-100 as its "python version"
pickles, read by an unpickler that admits only the numpy arrays those files hold; CelebA as its aligned JPEGs
(:mod:`.celeba`). The folder is ``--data-dir``, else ``$VAECONVERGE_DATA``, else ``./data``; MNIST and
Fashion-MNIST live in subfolders named after them (torchvision's ``MNIST/raw`` and ``FashionMNIST/raw`` are found
too), CIFAR-100 in ``cifar-100-python/`` as its archive unpacks, CelebA in ``celeba/``. Pixels stay uint8
(:mod:`.storage` converts them per batch)."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..validation import ConfigError
from .celeba import celeba_files, celeba_present, load_celeba

IDX_UBYTE = 0x08  # the idx type code of unsigned bytes
IDX_SETS = {  # name -> (subfolders searched, training-image file, image side)
    "mnist": (("mnist", "MNIST/raw"), "train-images-idx3-ubyte", 28),
    "fashion-mnist": (("fashion-mnist", "FashionMNIST/raw"), "train-images-idx3-ubyte", 28),
}
CIFAR100 = ("cifar-100-python", "train", 3 * 32 * 32)  # subfolder, training file, values per image
LOCAL_DATA = (*IDX_SETS, "cifar100", "celeba")
# What a CIFAR-100 pickle may reference: numpy's array reconstruction (its module moved in numpy 2).
_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def _frombuffer(buffer: object, dtype: np.dtype, shape: tuple[int, ...], order: str,
                axis_order: tuple[int, ...] | None = None) -> np.ndarray:
    """What protocol 5 pickles of arrays call (numpy's ``_frombuffer``), admitting only plain bytes of a
    plain numeric dtype."""
    if not isinstance(buffer, bytes | bytearray | pickle.PickleBuffer) or not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("refused an array that is not plain bytes")
    if dtype.hasobject or dtype.kind not in "biufc" or order not in ("C", "F", "K"):
        raise pickle.UnpicklingError(f"refused an array of dtype {dtype} (order {order!r})")
    array = np.frombuffer(buffer, dtype=dtype)
    if order == "K" and axis_order is not None:
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order="C" if order == "K" else order)


def _empty_bytes(*args: object) -> bytes:
    """What protocol 2 pickles of empty bytes (an empty array's buffer) call: ``bytes()`` and nothing more."""
    if args:
        raise pickle.UnpicklingError("refused bytes() with arguments, which a CIFAR-100 file does not contain")
    return b""


# Protocol 5 (pickle.HIGHEST_PROTOCOL) stores arrays as a buffer read back by numpy's ``_frombuffer``, and
# protocol 2 writes empty bytes as a call of ``bytes()``: both served by the checked stand-ins above.
_PICKLE_REPLACED = {("numpy.core.numeric", "_frombuffer"): _frombuffer,
                    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
                    ("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes}


def data_root(data_dir: str | None) -> Path:
    """The folder holding the local data sets."""
    return Path(data_dir or os.environ.get("VAECONVERGE_DATA") or "data")


def expected_files(name: str, data_dir: str | None) -> list[Path]:
    """Where data set ``name`` is looked for: any one of these files will do (CelebA: its images folder and
    a partition file)."""
    root = data_root(data_dir)
    if name == "celeba":
        return celeba_files(root)
    if name == "cifar100":
        return [root / CIFAR100[0] / CIFAR100[1]]
    subfolders, stem, _ = IDX_SETS[name]
    return [root / sub / f"{stem}{ext}" for sub in subfolders for ext in ("", ".gz")]


def find_local(name: str, data_dir: str | None) -> Path | None:
    """The file (CelebA: the images folder) data set ``name`` would be read from, or None if it is absent."""
    if name == "celeba":
        return celeba_present(data_root(data_dir))
    return next((path for path in expected_files(name, data_dir) if path.is_file()), None)


def load_local(name: str, data_dir: str | None, progress: bool = True) -> torch.Tensor:
    """The training images of data set ``name`` as an (N, pixels) uint8 tensor (channel-first); CelebA's is
    mapped from its cache, built first with a progress bar if need be."""
    if name == "celeba":
        images = load_celeba(data_root(data_dir), progress)
    else:
        images = _cifar100(data_dir) if name == "cifar100" else _idx_set(name, data_dir)
    flat = images.reshape(len(images), -1)
    return torch.from_numpy(np.require(flat, requirements="W"))  # a copy only of read-only buffers


def _idx_set(name: str, data_dir: str | None) -> np.ndarray:
    subfolders, stem, side = IDX_SETS[name]
    root = data_root(data_dir)
    found = find_local(name, data_dir)
    if found is None:
        where = " or ".join(str(root / sub) for sub in subfolders)
        raise ConfigError("--data-dir", f"{name}: no {stem} or {stem}.gz in {where} (the standard idx files of "
                                        f"{name}; set --data-dir or VAECONVERGE_DATA)")
    images = read_idx_images(found)
    if images.shape[1:] != (side, side):
        raise ConfigError("--data", f"{found}: expected {side}x{side} images for {name}, found "
                                    f"{images.shape[1]}x{images.shape[2]}")
    return images


def _cifar100(data_dir: str | None) -> np.ndarray:
    folder, _, values = CIFAR100
    (path,) = expected_files("cifar100", data_dir)
    if not path.is_file():
        raise ConfigError("--data-dir", f"cifar100: no {path} (the \"python version\" archive unpacked: "
                                        f"{folder}/train, test, meta; set --data-dir or VAECONVERGE_DATA)")
    batch = read_cifar_pickle(path)
    images = batch.get(b"data")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise ConfigError("--data", f"{path}: no uint8 image array under b'data' (found {type(images).__name__})")
    if images.shape[1] != values:
        raise ConfigError("--data", f"{path}: expected {values} values per image (3 channels x 32 x 32), found "
                                    f"{images.shape[1]}")
    if images.shape[0] == 0:
        raise ConfigError("--data", f"{path}: no examples (its b'data' array holds 0 images)")
    return images


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what :data:`_PICKLE_ALLOWED` names: a CIFAR file runs no other code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _PICKLE_REPLACED:
            return _PICKLE_REPLACED[module, name]
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}, which a CIFAR-100 file does not contain")


def read_cifar_pickle(path: Path) -> dict:
    """One CIFAR "python version" batch file: a dictionary with bytes keys (b'data', b'fine_labels', ...)."""
    try:
        with open(path, "rb") as handle:
            batch = _RestrictedUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError) as exc:
        raise ConfigError("--data", f"{path}: not a readable CIFAR-100 file ({exc or 'truncated'})") from None
    except OSError as exc:
        raise ConfigError("--data", f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(batch, dict):
        raise ConfigError("--data", f"{path}: expected a dictionary, found {type(batch).__name__}")
    return batch


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
    if shape[0] == 0:
        raise ConfigError("--data", f"{path}: no examples (its header announces 0 images)")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ConfigError("--data", f"{path}: truncated or corrupt: its header announces {shape[0]} images of "
                                    f"{shape[1]}x{shape[2]} ({expected} bytes), the file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)

"""Local image data sets read from their standard files: MNIST and Fashion-MNIST idx files (plain or gzip),
written here byte for byte in the official format, and every way such a folder can be wrong."""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vaeconverge.cli import main
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import as_float, load_dataset


def idx_images(images: np.ndarray) -> bytes:
    """The idx encoding: magic 0x00000803 (unsigned bytes, 3 dimensions), big-endian sizes, then the pixels."""
    header = bytes([0, 0, 0x08, images.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    return header + images.astype(np.uint8).tobytes()


def pixels(n: int = 40, side: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, side, side), dtype=np.uint8)


def write(folder: Path, data: bytes, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize(("name", "subfolder", "gz"), [
    ("mnist", "mnist", False), ("mnist", "MNIST/raw", True), ("fashion-mnist", "fashion-mnist", True),
    ("fashion-mnist", "FashionMNIST/raw", False),
])
def test_idx_files_round_trip_to_scaled_pixels(tmp_path, name, subfolder, gz):
    images = pixels()
    write(tmp_path / subfolder, idx_images(images), gz)
    x = load_dataset(RunConfig(data=name, data_dir=str(tmp_path), batch_size=8)).x
    assert x.shape == (40, 784) and x.dtype == torch.uint8  # kept compact; converted per batch
    assert torch.equal(as_float(x), torch.from_numpy(images.reshape(40, -1)).float() / 255)


def test_the_data_folder_comes_from_the_environment(tmp_path, monkeypatch):
    write(tmp_path / "mnist", idx_images(pixels(10)))
    monkeypatch.setenv("VAECONVERGE_DATA", str(tmp_path))
    assert load_dataset(RunConfig(data="mnist", batch_size=8)).x.shape == (10, 784)


@pytest.mark.parametrize(("content", "problem"), [
    (None, "no train-images-idx3-ubyte or train-images-idx3-ubyte.gz in"),
    (idx_images(pixels())[:-100], "truncated or corrupt: its header announces 40 images of 28x28"),
    (b"\x00\x00\x08", "not an idx file of unsigned bytes"),
    (b"\x00\x00\x0d\x03" + bytes(12), "not an idx file of unsigned bytes"),
    (idx_images(np.zeros((5, 784), np.uint8)), "expected an idx image file with 3 dimensions, found 2"),
    (idx_images(pixels(5, side=32)), "expected 28x28 images for mnist, found 32x32"),
])
def test_a_wrong_folder_or_file_is_named(tmp_path, content, problem):
    if content is not None:
        write(tmp_path / "mnist", content)
    with pytest.raises(ConfigError) as info:
        load_dataset(RunConfig(data="mnist", data_dir=str(tmp_path), batch_size=4))
    assert problem in str(info.value)
    if content is not None:
        assert "train-images-idx3-ubyte" in str(info.value)  # the file is named


def test_a_cut_gzip_file_is_named(tmp_path):
    path = write(tmp_path / "mnist", idx_images(pixels()), gz=True)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte\.gz: cannot be read"):
        load_dataset(RunConfig(data="mnist", data_dir=str(tmp_path), batch_size=4))


def test_train_on_mnist_files_from_the_cli(tmp_path, capsys):
    write(tmp_path / "data" / "mnist", idx_images(pixels(64)))
    out = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--data-dir", str(tmp_path / "data"), "--hidden", "16", "--depth", "1",
                 "--batch-size", "16", "--steps", "10", "--no-constants", "--quiet", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()
    assert main(["train", "--data", "mnist", "--data-dir", str(tmp_path / "none"), "--quiet",
                 "--out", str(tmp_path / "other")]) == 2
    assert "--data-dir: mnist: no train-images-idx3-ubyte" in capsys.readouterr().err


def cifar_batch(n: int = 12, values: int = 3072) -> dict:
    """A CIFAR-100 "python version" training batch: the dictionary the official files pickle."""
    rng = np.random.default_rng(1)
    return {b"filenames": [f"img_{i}.png".encode() for i in range(n)], b"batch_label": b"training batch 1 of 1",
            b"fine_labels": rng.integers(0, 100, n).tolist(), b"coarse_labels": rng.integers(0, 20, n).tolist(),
            b"data": rng.integers(0, 256, size=(n, values), dtype=np.uint8)}


def write_cifar(root: Path, batch: object, protocol: int = 2) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train").write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder / "train"


def test_cifar100_pickles_round_trip_channel_first(tmp_path):
    batch = cifar_batch()
    write_cifar(tmp_path, batch)
    x = load_dataset(RunConfig(data="cifar100", data_dir=str(tmp_path), batch_size=4)).x
    assert x.shape == (12, 3072) and x.dtype == torch.uint8
    assert torch.equal(as_float(x), torch.from_numpy(batch[b"data"]).float() / 255)


class Payload:
    """What a malicious pickle would smuggle in: a call at load time."""

    def __reduce__(self):
        return (os.system, ("echo pwned > " + str(MARK),))


MARK = Path("/tmp/vaeconverge-unpickler-mark")


@pytest.mark.parametrize(("content", "problem"), [
    ("missing", "cifar100: no"),
    ({b"data": Payload()}, "refused to load posix.system"),
    (b"truncated", "not a readable CIFAR-100 file"),
    ([1, 2, 3], "expected a dictionary, found list"),
    ({b"labels": [1]}, "no uint8 image array under b'data'"),
    ("wrong-size", "expected 3072 values per image (3 channels x 32 x 32), found 1024"),
])
def test_a_wrong_cifar_folder_or_file_is_named(tmp_path, content, problem):
    MARK.unlink(missing_ok=True)
    if content == "wrong-size":
        write_cifar(tmp_path, cifar_batch(values=1024))
    elif isinstance(content, bytes):
        path = write_cifar(tmp_path, cifar_batch())
        path.write_bytes(path.read_bytes()[:200])
    elif content != "missing":
        write_cifar(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_dataset(RunConfig(data="cifar100", data_dir=str(tmp_path), batch_size=4))
    assert problem in str(info.value)
    assert not MARK.exists()  # nothing in the file ran


def one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_an_idx_file_with_no_images_is_named(tmp_path, capsys):
    path = write(tmp_path / "mnist", idx_images(np.zeros((0, 28, 28), np.uint8)))
    with pytest.raises(ConfigError, match=f"--data: {path}: no examples"):
        load_dataset(RunConfig(data="mnist", data_dir=str(tmp_path), batch_size=4))
    err = one_line_error(capsys, main(["train", "--data", "mnist", "--data-dir", str(tmp_path), "--quiet",
                                       "--out", str(tmp_path / "run")]))
    assert f"{path}: no examples" in err and not (tmp_path / "run").exists()


def test_a_cifar_file_with_no_images_is_named(tmp_path, capsys):
    path = write_cifar(tmp_path, cifar_batch(n=0))
    with pytest.raises(ConfigError, match=f"--data: {path}: no examples"):
        load_dataset(RunConfig(data="cifar100", data_dir=str(tmp_path), batch_size=4))
    err = one_line_error(capsys, main(["train", "--data", "cifar100", "--data-dir", str(tmp_path), "--quiet",
                                       "--out", str(tmp_path / "run")]))
    assert f"{path}: no examples" in err


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_cifar100_pickles_of_every_protocol_load(tmp_path, protocol):
    batch = cifar_batch()
    write_cifar(tmp_path, batch, protocol=protocol)
    x = load_dataset(RunConfig(data="cifar100", data_dir=str(tmp_path), batch_size=4)).x
    assert torch.equal(x, torch.from_numpy(batch[b"data"]))


def test_a_fortran_ordered_protocol5_array_loads(tmp_path):
    batch = cifar_batch()
    write_cifar(tmp_path, {**batch, b"data": np.asfortranarray(batch[b"data"])}, protocol=5)
    x = load_dataset(RunConfig(data="cifar100", data_dir=str(tmp_path), batch_size=4)).x
    assert torch.equal(x, torch.from_numpy(batch[b"data"]))


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_malicious_pickle_is_refused_without_suggesting_to_trust_it(tmp_path, capsys, protocol):
    MARK.unlink(missing_ok=True)
    write_cifar(tmp_path, {b"data": Payload()}, protocol=protocol)
    err = one_line_error(capsys, main(["train", "--data", "cifar100", "--data-dir", str(tmp_path), "--quiet",
                                       "--out", str(tmp_path / "run")]))
    assert "refused to load posix.system" in err
    assert "weights_only" not in err and "trust" not in err.lower()
    assert not MARK.exists()


def test_a_protocol5_object_array_is_refused(tmp_path):
    """Protocol 5's array route admits plain numbers only: an object array would unpickle its items."""
    from vaeconverge.data.local_files import _frombuffer

    with pytest.raises(pickle.UnpicklingError, match="refused an array of dtype object"):
        _frombuffer(bytes(8), np.dtype(object), (1,), "C")
    with pytest.raises(pickle.UnpicklingError, match="not plain bytes"):
        _frombuffer("text", np.dtype(np.uint8), (4,), "C")


def test_data_list_says_where_each_set_is_looked_for_and_whether_it_is_there(tmp_path, capsys):
    write(tmp_path / "MNIST" / "raw", idx_images(pixels(3)), gz=True)
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "present" in lines["mnist"] and "MNIST/raw/train-images-idx3-ubyte.gz" in lines["mnist"]
    assert "absent" in lines["fashion-mnist"] and "absent" in lines["cifar100"]
    assert str(tmp_path / "cifar-100-python" / "train") in lines["cifar100"]


def test_train_conv32_on_cifar100_files_from_the_cli(tmp_path, capsys):
    """The paper's CIFAR-100 network trains from the standard files (channel-first 3x32x32 images)."""
    write_cifar(tmp_path / "data", cifar_batch(n=8))
    out = tmp_path / "run"
    assert main(["train", "--data", "cifar100", "--data-dir", str(tmp_path / "data"), "--model", "conv32",
                 "--latent-dim", "4", "--activation", "softclip", "--batch-size", "4", "--steps", "3",
                 "--eval-every", "3", "--no-constants", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"name": "cifar100", "n": 8, "dim": 3072}
    assert math.isfinite(summary["grad_sq_norm"])

"""`vaeconverge data download` against an HTTP server on 127.0.0.1 started here: a verified file is kept and
loads; a checksum mismatch and a transfer cut short keep nothing."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaeconverge.cli import main
from vaeconverge.config import RunConfig
from vaeconverge.data import download as download_module
from vaeconverge.data import load_dataset
from vaeconverge.data.download import RemoteFile


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class CutShort(Quiet):
    """Announces the whole file, sends a tenth of it, and hangs up."""

    def do_GET(self) -> None:
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 10])
        self.wfile.flush()
        self.close_connection = True


def serve(folder: Path, handler: type[SimpleHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(tmp_path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "mirror"
    folder.mkdir()
    yield from ((folder, url) for url in serve(folder, Quiet))


def mnist_gz(n: int = 20) -> bytes:
    images = np.random.default_rng(2).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    return gzip.compress(header + images.tobytes())


def published(monkeypatch, name: str, files: tuple[RemoteFile, ...]) -> None:
    monkeypatch.setitem(download_module.REMOTE_FILES, name, files)


def test_a_verified_download_is_kept_and_loads(tmp_path, mirror, monkeypatch, capsys):
    folder, url = mirror
    data = mnist_gz()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(data)
    published(monkeypatch, "mnist", (RemoteFile("train-images-idx3-ubyte.gz", hashlib.md5(data).hexdigest(),
                                                "mnist"),))
    root = tmp_path / "data"
    assert main(["data", "download", "mnist", "--mirror", url, "--data-dir", str(root), "--quiet"]) == 0
    assert "MD5 verified" in capsys.readouterr().out
    assert load_dataset(RunConfig(data="mnist", data_dir=str(root), batch_size=4)).x.shape == (20, 784)


def test_an_archive_is_unpacked_where_the_loader_looks(tmp_path, mirror, monkeypatch):
    folder, url = mirror
    batch = {b"data": np.random.default_rng(3).integers(0, 256, size=(6, 3072), dtype=np.uint8)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        payload = pickle.dumps(batch, protocol=2)
        info = tarfile.TarInfo("cifar-100-python/train")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    (folder / "cifar-100-python.tar.gz").write_bytes(buffer.getvalue())
    published(monkeypatch, "cifar100", (RemoteFile("cifar-100-python.tar.gz",
                                                   hashlib.md5(buffer.getvalue()).hexdigest(), unpack=True),))
    root = tmp_path / "data"
    assert main(["data", "download", "cifar100", "--mirror", url, "--data-dir", str(root), "--quiet"]) == 0
    assert load_dataset(RunConfig(data="cifar100", data_dir=str(root), batch_size=2)).x.shape == (6, 3072)


def test_celebas_zip_and_partition_file_land_where_the_loader_looks(tmp_path, mirror, monkeypatch):
    folder, url = mirror
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # the official archive holds the folder img_align_celeba/
        for name in ("000001.jpg", "000002.jpg"):
            image = io.BytesIO()
            Image.new("RGB", (178, 218), (200, 120, 90)).save(image, "JPEG")
            archive.writestr(f"img_align_celeba/{name}", image.getvalue())
    partition = b"000001.jpg 0\n000002.jpg 2\n"
    (folder / "img_align_celeba.zip").write_bytes(buffer.getvalue())
    (folder / "list_eval_partition.txt").write_bytes(partition)
    published(monkeypatch, "celeba", (
        RemoteFile("img_align_celeba.zip", hashlib.md5(buffer.getvalue()).hexdigest(), "celeba", unpack=True),
        RemoteFile("list_eval_partition.txt", hashlib.md5(partition).hexdigest(), "celeba")))
    root = tmp_path / "data"
    assert main(["data", "download", "celeba", "--mirror", url, "--data-dir", str(root), "--quiet"]) == 0
    x = load_dataset(RunConfig(data="celeba", data_dir=str(root), batch_size=1), progress=False).x
    assert x.shape == (1, 3 * 64 * 64)  # the train split only


def test_a_checksum_mismatch_keeps_nothing(tmp_path, mirror, capsys):
    folder, url = mirror
    (folder / "train-images-idx3-ubyte.gz").write_bytes(mnist_gz())  # not the published MNIST file
    root = tmp_path / "data"
    assert main(["data", "download", "mnist", "--mirror", url, "--data-dir", str(root), "--quiet"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert list((root / "mnist").iterdir()) == []


def test_an_interrupted_transfer_keeps_nothing(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mirror"
    folder.mkdir()
    data = mnist_gz(200)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(data)
    published(monkeypatch, "mnist", (RemoteFile("train-images-idx3-ubyte.gz", hashlib.md5(data).hexdigest(),
                                                "mnist"),))
    root = tmp_path / "data"
    for url in serve(folder, CutShort):
        assert main(["data", "download", "mnist", "--mirror", url, "--data-dir", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nothing was kept" in err
    assert list((root / "mnist").iterdir()) == []


def test_download_needs_a_known_name_and_a_mirror(capsys):
    assert main(["data", "download", "imagenet", "--mirror", "http://127.0.0.1:9"]) == 2
    assert "name one of mnist, fashion-mnist, cifar100, celeba" in capsys.readouterr().err
    assert main(["data", "download", "mnist"]) == 2
    assert "--mirror: give the base URL" in capsys.readouterr().err

"""`vaeconverge data download` against an HTTP server on 127.0.0.1 started here (or a file:// mirror): a verified
file is kept and loads; a checksum mismatch and a transfer cut short keep nothing; hostile folders and archives
are refused in one line."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
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
    assert not root.exists()  # nor the folders made for it


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
    assert not root.exists()  # nor the folders made for it


def test_download_needs_a_known_name_and_a_mirror(capsys):
    assert main(["data", "download", "imagenet", "--mirror", "http://127.0.0.1:9"]) == 2
    assert "name one of mnist, fashion-mnist, cifar100, celeba" in capsys.readouterr().err
    assert main(["data", "download", "mnist"]) == 2
    assert "--mirror: give the base URL" in capsys.readouterr().err


def mnist_published(monkeypatch, folder: Path) -> bytes:
    """A small MNIST file on the mirror ``folder``, published under its own MD5."""
    folder.mkdir(exist_ok=True)
    data = mnist_gz()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(data)
    published(monkeypatch, "mnist", (RemoteFile("train-images-idx3-ubyte.gz", hashlib.md5(data).hexdigest(),
                                                "mnist"),))
    return data


def one_line_error(capsys, code: int, *words: str) -> str:
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err
    return err


def test_a_planted_link_at_the_temporary_name_is_never_written_through(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mirror"
    data = mnist_published(monkeypatch, folder)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    link = root / "mnist" / "train-images-idx3-ubyte.gz.part"
    link.symlink_to(outside)
    args = ["data", "download", "mnist", "--mirror", folder.as_uri(), "--data-dir", str(root), "--quiet"]
    assert main(args) == 0
    assert outside.read_bytes() == b"precious"
    kept = root / "mnist" / "train-images-idx3-ubyte.gz"
    assert kept.read_bytes() == data and not kept.is_symlink()
    assert sorted(p.name for p in (root / "mnist").iterdir()) == [kept.name, link.name]  # no temporary left

    # a link at the final name is replaced, not written through
    kept.unlink()
    kept.symlink_to(outside)
    assert main(args) == 0
    assert outside.read_bytes() == b"precious" and kept.read_bytes() == data and not kept.is_symlink()


@pytest.mark.parametrize("mirror", ["notaurl", "mirror.example.org/mnist", "gopher://example.org", "http://"])
def test_a_mirror_that_is_not_a_url_is_named(tmp_path, mirror, capsys):
    root = tmp_path / "data"
    code = main(["data", "download", "mnist", "--mirror", mirror, "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "--mirror", "is not a URL", repr(mirror))
    assert not root.exists()


def test_a_data_dir_that_is_a_file_is_named(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mirror"
    mnist_published(monkeypatch, folder)
    root = tmp_path / "data"
    root.write_text("not a folder")
    code = main(["data", "download", "mnist", "--mirror", folder.as_uri(), "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "--data-dir", f"{root} is not a folder")
    assert root.read_text() == "not a folder"
    # the subfolder a file
    root.unlink()
    root.mkdir()
    (root / "mnist").write_text("x")
    code = main(["data", "download", "mnist", "--mirror", folder.as_uri(), "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "--data-dir", f"{root / 'mnist'} is not a folder")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_data_folder_is_named(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mirror"
    mnist_published(monkeypatch, folder)
    root = tmp_path / "data"
    root.mkdir()
    root.chmod(0o555)
    try:
        code = main(["data", "download", "mnist", "--mirror", folder.as_uri(), "--data-dir", str(root), "--quiet"])
        one_line_error(capsys, code, "--data-dir", "cannot create", "Permission denied")
        root.chmod(0o755)
        (root / "mnist").mkdir()
        (root / "mnist").chmod(0o555)
        code = main(["data", "download", "mnist", "--mirror", folder.as_uri(), "--data-dir", str(root), "--quiet"])
        one_line_error(capsys, code, "--data-dir", "cannot write in", "Permission denied", "nothing was kept")
    finally:
        root.chmod(0o755)
        if (root / "mnist").exists():
            (root / "mnist").chmod(0o755)
    assert list((root / "mnist").iterdir()) == []


def test_an_unwritable_folder_is_named_even_for_root(tmp_path, monkeypatch, capsys):
    """The same failure, simulated, so that it is checked where the tests run as root too."""
    folder = tmp_path / "mirror"
    mnist_published(monkeypatch, folder)
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if str(path).endswith(".part"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(download_module.os, "open", refuse)
    root = tmp_path / "data"
    code = main(["data", "download", "mnist", "--mirror", folder.as_uri(), "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "--data-dir", "cannot write in", "Permission denied")
    assert not root.exists()  # the folders made for it are gone again

    def no_mkdir(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    code = main(["data", "download", "mnist", "--mirror", folder.as_uri(), "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "--data-dir", f"cannot create {root} (Permission denied)")


def hostile_tar(member: tarfile.TarInfo, payload: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        good = tarfile.TarInfo("cifar-100-python/meta")
        good.size = 3
        archive.addfile(good, io.BytesIO(b"abc"))
        member.size = len(payload) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(("member", "problem"), [
    (tarfile.TarInfo("../escaped.txt"), "outside the destination"),
    (tarfile.TarInfo("cifar-100-python/../../escaped.txt"), "outside the destination"),
    (tarfile.TarInfo("/tmp/vaeconverge-absolute-member.txt"), "absolute path"),
    (link("cifar-100-python/train", "/etc/passwd"), "absolute path"),
    (link("cifar-100-python/up", "../../escaped.txt"), "outside the destination"),
])
def test_a_tar_with_a_member_landing_outside_is_refused(tmp_path, mirror, monkeypatch, capsys, member, problem):
    folder, url = mirror
    archive = hostile_tar(member, b"evil")
    (folder / "cifar-100-python.tar.gz").write_bytes(archive)
    published(monkeypatch, "cifar100", (RemoteFile("cifar-100-python.tar.gz", hashlib.md5(archive).hexdigest(),
                                                   unpack=True),))
    root = tmp_path / "sub" / "data"
    code = main(["data", "download", "cifar100", "--mirror", url, "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "--mirror", "refused", problem, "not kept")
    assert not (tmp_path / "sub").exists()  # nothing unpacked, no folder left
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/vaeconverge-absolute-member.txt").exists()


def test_a_zip_with_a_member_landing_outside_is_refused(tmp_path, mirror, monkeypatch, capsys):
    folder, url = mirror
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("img_align_celeba/000001.jpg", b"x")
        archive.writestr("../../escaped.txt", b"evil")
    (folder / "img_align_celeba.zip").write_bytes(buffer.getvalue())
    published(monkeypatch, "celeba", (RemoteFile("img_align_celeba.zip", hashlib.md5(buffer.getvalue()).hexdigest(),
                                                 "celeba", unpack=True),))
    root = tmp_path / "data"
    code = main(["data", "download", "celeba", "--mirror", url, "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "--mirror", "refused", "'../../escaped.txt'", "not kept")
    assert not root.exists()


def test_an_archive_is_not_unpacked_through_a_link_in_the_data_folder(tmp_path, mirror, monkeypatch, capsys):
    folder, url = mirror
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("img_align_celeba/000001.jpg", b"evil")
    (folder / "img_align_celeba.zip").write_bytes(buffer.getvalue())
    published(monkeypatch, "celeba", (RemoteFile("img_align_celeba.zip", hashlib.md5(buffer.getvalue()).hexdigest(),
                                                 "celeba", unpack=True),))
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "data"
    (root / "celeba").mkdir(parents=True)
    (root / "celeba" / "img_align_celeba").symlink_to(outside)
    code = main(["data", "download", "celeba", "--mirror", url, "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "refused", "img_align_celeba/000001.jpg")
    assert list(outside.iterdir()) == []


def test_a_failed_second_file_keeps_the_first_and_its_folder(tmp_path, mirror, monkeypatch, capsys):
    folder, url = mirror
    partition = b"000001.jpg 0\n"
    (folder / "list_eval_partition.txt").write_bytes(partition)
    published(monkeypatch, "celeba", (
        RemoteFile("list_eval_partition.txt", hashlib.md5(partition).hexdigest(), "celeba"),
        RemoteFile("absent.zip", "0" * 32, "celeba")))
    root = tmp_path / "data"
    code = main(["data", "download", "celeba", "--mirror", url, "--data-dir", str(root), "--quiet"])
    one_line_error(capsys, code, "--mirror", "absent.zip", "download failed")
    assert [p.name for p in (root / "celeba").iterdir()] == ["list_eval_partition.txt"]

"""``vaeconverge data download NAME --mirror URL``: fetch a local data set's standard files from a mirror
into the data folder, each checked against its published MD5 before it is kept. A file is written under a
temporary name and moved into place only once complete and verified, so an interrupted or corrupt transfer
leaves nothing behind; archives (tar or zip) are then unpacked where the loaders look."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import ConfigError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: its name on the mirror, its MD5 as published, and the subfolder it goes to;
    ``unpack`` archives are extracted in place after verification."""

    name: str
    md5: str
    folder: str = ""
    unpack: bool = False


# The standard distribution files and their published MD5 sums (the training images are all the loaders read;
# CelebA's are the sums torchvision publishes for the files of the official Google Drive folder).
REMOTE_FILES = {
    "mnist": (RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "mnist"),),
    "fashion-mnist": (RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "fashion-mnist"),),
    "cifar100": (RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", unpack=True),),
    "celeba": (RemoteFile("img_align_celeba.zip", "00d2c5bc6d35e252742224ab0c1e8fcb", "celeba", unpack=True),
               RemoteFile("list_eval_partition.txt", "d32c9cbf5e040fd4025c592c306e6668", "celeba")),
}
CHUNK = 1 << 16


def download(files: tuple[RemoteFile, ...], mirror: str, root: Path, progress: bool = True) -> list[Path]:
    """Fetch ``files`` from ``mirror`` (a base URL) into ``root``; return the paths kept."""
    kept = []
    for remote in files:
        target = root / remote.folder / remote.name
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"{mirror.rstrip('/')}/{remote.name}"
        partial = target.with_name(target.name + ".part")
        try:
            digest = _fetch(url, partial, progress)
            if digest != remote.md5:
                raise ConfigError("--mirror", f"{url}: checksum mismatch (MD5 {digest}, expected {remote.md5}); "
                                              "the file was not kept")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        if remote.unpack:
            _unpack(target)
        kept.append(target)
    return kept


def _unpack(path: Path) -> None:
    """Extract a zip or tar archive beside itself (neither lets a member land outside that folder)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            archive.extractall(path.parent)
    else:
        with tarfile.open(path) as archive:
            archive.extractall(path.parent, filter="data")


def _fetch(url: str, path: Path, progress: bool) -> str:
    """Stream ``url`` into ``path``; return its MD5. A transfer shorter than announced is an error."""
    md5, received = hashlib.md5(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=Path(url).name, disable=not progress or None) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # HTTPException: a cut body
        raise ConfigError("--mirror", f"{url}: download failed ({exc}); nothing was kept") from None
    if size is not None and received != size:
        raise ConfigError("--mirror", f"{url}: transfer interrupted after {received} of {size} bytes; nothing was kept")
    return md5.hexdigest()

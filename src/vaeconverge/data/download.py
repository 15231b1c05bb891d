"""``vaeconverge data download NAME --mirror URL``: fetch a local data set's standard files from a mirror
into the data folder, each checked against its published MD5 before it is kept. A file is written under a
temporary name created afresh in its folder (never opened through a link) and moved into place only once
complete and verified, so an interrupted or corrupt transfer leaves nothing behind, not even the folders made
for it; archives (tar or zip) are checked member by member before they are kept, then unpacked where the
loaders look, and one with a member that would land outside its folder is refused."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import secrets
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
SCHEMES = ("http", "https", "ftp", "file")


def check_mirror(mirror: str) -> None:
    """Raise :class:`ConfigError` unless ``mirror`` is a URL urllib can fetch from."""
    try:
        parts = urllib.parse.urlsplit(mirror)
    except ValueError as exc:
        raise ConfigError("--mirror", f"{mirror!r} is not a URL ({exc})") from None
    if parts.scheme.lower() not in SCHEMES or not (parts.netloc or parts.scheme.lower() == "file"):
        raise ConfigError("--mirror", f"{mirror!r} is not a URL; give the base URL of a mirror "
                                      f"({', '.join(s + '://' for s in SCHEMES)})")


def download(files: tuple[RemoteFile, ...], mirror: str, root: Path, progress: bool = True) -> list[Path]:
    """Fetch ``files`` from ``mirror`` (a base URL) into ``root``; return the paths kept. Folders made here
    are removed again if a failure leaves them empty."""
    check_mirror(mirror)
    if root.exists() and not root.is_dir():
        raise ConfigError("--data-dir", f"{root} is not a folder")
    made: list[Path] = []
    kept = []
    try:
        for remote in files:
            target = root / remote.folder / remote.name
            _make_folder(target.parent, made)
            _fetch_verified(remote, f"{mirror.rstrip('/')}/{remote.name}", target, progress)
            if remote.unpack:
                _unpack(target)
            kept.append(target)
    except BaseException:
        for folder in reversed(made):  # the deepest first; only those left empty go
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return kept


def _make_folder(folder: Path, made: list[Path]) -> None:
    """Create ``folder`` and any missing parents, noting each one created in ``made``."""
    missing = []
    for path in (folder, *folder.parents):
        if path.is_dir():
            break
        if path.exists() or path.is_symlink():
            raise ConfigError("--data-dir", f"{path} is not a folder")
        missing.append(path)
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise ConfigError("--data-dir", f"{path} is not a folder") from None
            continue
        except OSError as exc:
            raise ConfigError("--data-dir", f"cannot create {path} ({exc.strerror or exc})") from None
        made.append(path)


def _fetch_verified(remote: RemoteFile, url: str, target: Path, progress: bool) -> None:
    """Download ``url`` into a fresh temporary file beside ``target`` and move it into place only if its MD5
    is the published one (and, for an archive, every member stays inside its folder)."""
    partial, handle = _create_partial(target)
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _fetch(url, out, target, progress)
        if digest != remote.md5:
            raise ConfigError("--mirror", f"{url}: checksum mismatch (MD5 {digest}, expected {remote.md5}); "
                                          "the file was not kept")
        if remote.unpack:
            _check_archive(partial, target.parent, url)
        os.replace(partial, target)
    except OSError as exc:
        raise ConfigError("--data-dir", f"cannot write {target} ({exc.strerror or exc}); nothing was "
                                        "kept") from None
    finally:
        partial.unlink(missing_ok=True)


def _create_partial(target: Path) -> tuple[Path, int]:
    """A new, empty temporary file beside ``target`` under an unpredictable name, created exclusively and
    never through a link; its path and an open descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        partial = target.with_name(f".{target.name}.{secrets.token_hex(8)}.part")
        try:
            return partial, os.open(partial, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError("--data-dir", f"cannot write in {target.parent} ({exc.strerror or exc}); nothing "
                                            "was kept") from None
    raise ConfigError("--data-dir", f"cannot create a temporary file in {target.parent}; nothing was kept")


def _inside(base: str, name: str, resolved: dict[str, str]) -> bool:
    """Whether ``base/name``, existing links resolved, stays inside ``base`` (a resolved path); ``resolved``
    caches the resolved parent folders of the members seen so far."""
    parent, leaf = os.path.split(name.rstrip("/"))
    if parent not in resolved:
        resolved[parent] = os.path.realpath(os.path.join(base, parent))
    path = os.path.join(resolved[parent], leaf)
    if os.path.islink(path):
        path = os.path.realpath(path)
    return os.path.commonpath([base, path]) == base


def _check_archive(path: Path, folder: Path, url: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a zip or tar archive whose every member would be extracted
    inside ``folder`` (no absolute or ``..`` names, no link leading out, nothing through an existing link)."""
    try:
        if zipfile.is_zipfile(path):
            base, resolved = os.path.realpath(folder), {}
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if os.path.isabs(name) or ".." in Path(name).parts or not _inside(base, name, resolved):
                        raise ConfigError("--mirror", f"{url}: refused: the archive member {name!r} would land "
                                                      f"outside {folder}; the file was not kept")
        else:
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    if member.name.startswith(("/", os.sep)) or os.path.isabs(member.name):
                        raise ConfigError("--mirror", f"{url}: refused: the archive member {member.name!r} has an "
                                                      "absolute path; the file was not kept")
                    try:
                        tarfile.data_filter(member, str(folder))
                    except tarfile.FilterError as exc:
                        raise ConfigError("--mirror", f"{url}: refused: {exc}; the file was not kept") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError("--mirror", f"{url}: not a readable archive ({exc}); the file was not kept") from None


def _unpack(path: Path) -> None:
    """Extract a zip or tar archive beside itself (its members were checked by :func:`_check_archive` before
    it was kept; the tar data filter checks them again)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(path.parent)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(path.parent, filter="data")
    except tarfile.FilterError as exc:
        raise ConfigError("--data-dir", f"{path}: refused to unpack: {exc}") from None
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError("--data-dir", f"{path}: verified, but unpacking it failed ({exc}); run the download "
                                        "again") from None


def _fetch(url: str, out: BinaryIO, target: Path, progress: bool) -> str:
    """Stream ``url`` into the open file ``out`` (the temporary file of ``target``); return its MD5. A transfer
    shorter than announced is an error."""
    md5, received, size = hashlib.md5(), 0, None
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=Path(url).name, disable=not progress or None) as bar:
                while chunk := response.read(CHUNK):
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise _WriteError(exc) from None
                    md5.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except _WriteError as exc:
        raise ConfigError("--data-dir", f"cannot write {target} ({exc.cause.strerror or exc.cause}); nothing was "
                                        "kept") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:  # a cut body, a bad URL
        raise ConfigError("--mirror", f"{url}: download failed ({exc}); nothing was kept") from None
    if size is not None and received != size:
        raise ConfigError("--mirror", f"{url}: transfer interrupted after {received} of {size} bytes; nothing was kept")
    return md5.hexdigest()


class _WriteError(Exception):
    """A local write failed (told apart from the mirror's failures)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause

"""CelebA from its aligned images, decoded once into a memory-mapped cache.

The folder is ``<data dir>/celeba/`` (torchvision's layout, which is also the official archive's contents):
``img_align_celeba/000001.jpg ...`` and ``list_eval_partition.txt`` (or ``Eval/list_eval_partition.txt`` as
distributed), whose lines ``NAME.jpg SPLIT`` put each image in the train (0), validation (1) or test (2) split;
training uses the train split, as the other loaders do.

Each training image, 178 wide by 218 high, is decoded with Pillow, centre-cropped to 140x140 (the box
(19, 39, 159, 179)) and then resized to 64x64 with Pillow's bilinear filter (antialiased when shrinking). The paper
says only "resized to 64x64"; this 140-pixel centre crop is the usual choice, keeping the face and little
background. The pixels are kept channel-first as 3*64*64 uint8 values per image in a ``.npy`` file next to the
images, named after a key of the source files (their names, sizes and modification times, the partition file's
contents and this preprocessing), so that any change rebuilds it; later loads map the file without decoding.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..runtime import available_cores
from ..validation import ConfigError

FOLDER = "celeba"
IMAGES = "img_align_celeba"
PARTITIONS = ("list_eval_partition.txt", "Eval/list_eval_partition.txt")
SPLITS = {"0": "train", "1": "valid", "2": "test"}
TRAIN = "0"
SOURCE_SIZE = (178, 218)  # width, height of every aligned image
CROP_BOX = (19, 39, 159, 179)  # the centred 140x140 square (left, top, right, bottom)
SIDE = 64
VALUES = 3 * SIDE * SIDE
CACHE_VERSION = 1  # bump when the preprocessing changes
BLOCK = 256  # images decoded per task


def celeba_files(root: Path) -> list[Path]:
    """What CelebA is read from: the images folder, then the places the partition file may be."""
    return [root / FOLDER / IMAGES, *(root / FOLDER / name for name in PARTITIONS)]


def celeba_present(root: Path) -> Path | None:
    """The images folder if it and a partition file are there, else None."""
    images, *partitions = celeba_files(root)
    return images if images.is_dir() and any(path.is_file() for path in partitions) else None


def load_celeba(root: Path, progress: bool = True) -> np.ndarray:
    """The train split as an (N, 3*64*64) uint8 array mapped from the cache, which is built first if missing or
    stale (decoding every training image, with a progress bar)."""
    images, *partitions = celeba_files(root)
    layout = (f"{root / FOLDER}/{IMAGES}/000001.jpg ... (the aligned images) and {root / FOLDER}/"
              f"{PARTITIONS[0]}; set --data-dir or VAECONVERGE_DATA")
    if not images.is_dir():
        raise ConfigError("--data-dir", f"celeba: no folder {images} (expected {layout})")
    partition = next((path for path in partitions if path.is_file()), None)
    if partition is None:
        raise ConfigError("--data-dir", f"celeba: no {PARTITIONS[0]} in {root / FOLDER} or {partitions[1].parent} "
                                        f"(expected {layout})")
    names = read_partition(partition)
    paths = [images / name for name in names]
    cache = root / FOLDER / f"{IMAGES}_train_{SIDE}x{SIDE}_{_cache_key(partition, paths)}.npy"
    mapped = _map(cache)
    if mapped is None or mapped.shape != (len(paths), VALUES):  # absent, stale or damaged
        _build_cache(paths, cache, progress)
        mapped = _map(cache)
    return mapped


def _map(cache: Path) -> np.ndarray | None:
    """The cache mapped copy-on-write (writable for torch, never written back), or None if it is unreadable."""
    try:
        return np.load(cache, mmap_mode="c")
    except (OSError, ValueError):  # OSError: absent; ValueError: not a .npy file
        return None


def read_partition(path: Path) -> list[str]:
    """The names of the train split's images, in the file's order."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("--data", f"{path}: not a text file of 'IMAGE.jpg SPLIT' lines (byte {exc.start} is not "
                                    "UTF-8)") from None
    except OSError as exc:
        raise ConfigError("--data", f"{path}: cannot be read ({exc.strerror or exc})") from None
    names = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in SPLITS or Path(fields[0]).name != fields[0]:
            raise ConfigError("--data", f"{path}: line {number}: expected 'IMAGE.jpg SPLIT' with SPLIT 0 (train), "
                                        f"1 (valid) or 2 (test), found {line.strip()!r}")
        if fields[1] == TRAIN:
            names.append(fields[0])
    if not names:
        raise ConfigError("--data", f"{path}: lists no image of the train split (0)")
    return names


def decode(path: Path) -> np.ndarray:
    """One aligned CelebA JPEG as (3, 64, 64) uint8, channel-first: centre crop, then bilinear resize."""
    try:
        with Image.open(path) as image:
            if image.size != SOURCE_SIZE:
                raise ConfigError("--data", f"{path}: expected an aligned CelebA image of {SOURCE_SIZE[0]}x"
                                            f"{SOURCE_SIZE[1]} pixels, found {image.width}x{image.height}")
            if image.mode != "RGB":
                channels = len(image.getbands())
                raise ConfigError("--data", f"{path}: expected an RGB image (3 channels), found mode {image.mode} "
                                            f"({channels} channel{'s' if channels > 1 else ''})")
            small = image.crop(CROP_BOX).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # OSError: unidentified or truncated
        raise ConfigError("--data", f"{path}: not a readable JPEG ({exc})") from None
    return np.asarray(small).transpose(2, 0, 1)


def _cache_key(partition: Path, paths: list[Path]) -> str:
    """16 hex digits of a hash of the preprocessing, the partition file and every training image's stat."""
    key = hashlib.sha256(repr((CACHE_VERSION, CROP_BOX, SIDE)).encode())
    key.update(partition.read_bytes())
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ConfigError("--data", f"{path}: missing, though {partition.name} lists it in the train "
                                        "split") from None
        key.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return key.hexdigest()[:16]


def _build_cache(paths: list[Path], cache: Path, progress: bool) -> None:
    """Decode ``paths`` into ``cache`` through a temporary file moved into place once complete; earlier caches
    of this folder are then removed."""
    partial = cache.with_name(cache.name + f".{os.getpid()}.part")
    try:
        try:
            partial.unlink(missing_ok=True)  # a leftover of an earlier process of this id (or a link): never followed
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(paths), VALUES))
        except OSError as exc:
            raise ConfigError("--data-dir", f"celeba: cannot write the cache {partial} ({exc.strerror or exc}); "
                                            "it needs 12288 bytes per training image beside the images") from None
        _decode_into(out, paths, progress)
        out.flush()
        del out
        os.replace(partial, cache)
    finally:
        partial.unlink(missing_ok=True)
    for stale in cache.parent.glob(f"{IMAGES}_train_{SIDE}x{SIDE}_*.npy"):
        if stale != cache:
            stale.unlink(missing_ok=True)


def _decode_into(out: np.ndarray, paths: list[Path], progress: bool) -> None:
    """Row i of ``out`` := the decoded ``paths[i]``. Pillow decodes and resizes outside the GIL, so threads,
    one per core, share the work, ``BLOCK`` images at a time; the first error stops them all."""

    def fill(rows: range) -> int:
        for row in rows:
            out[row] = decode(paths[row]).reshape(-1)
        return len(rows)

    blocks = [range(start, min(start + BLOCK, len(paths))) for start in range(0, len(paths), BLOCK)]
    pool = ThreadPoolExecutor(available_cores())
    bar = tqdm(total=len(paths), desc="celeba: decoding into the cache", unit="img", disable=not progress or None)
    try:
        for done in pool.map(fill, blocks):
            bar.update(done)
    finally:
        pool.shutdown(cancel_futures=True)
        bar.close()

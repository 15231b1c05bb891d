"""CelebA loading: how fast aligned JPEGs are decoded into the cache, how long a cached load takes, and what the
cache costs on disk, on a synthetic folder of CelebA-size images (178x218, smooth random content saved at JPEG
quality 90: about the size of the real files).

Reports: decoding throughput (images/s, on the cores this process may use; ``--cores`` restricts them), a
cached load's time (the key over the sources' stats, then a memory map; fastest of 3), a full pass over the
mapped pixels in random batches of 128 gathered and converted to float (images/s, one torch thread, fastest of
3), and the cache
size per image and for the 162,770-image train split.
Run: ``.venv/bin/python benchmarks/celeba_loading.py [--images 2000] [--cores N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaeconverge.data import as_float
from vaeconverge.data.celeba import FOLDER, IMAGES, PARTITIONS, SOURCE_SIZE, VALUES, load_celeba
from vaeconverge.runtime import available_cores

TRAIN_SPLIT = 162_770  # images in CelebA's train split
BATCH = 128


def write_folder(root: Path, n: int) -> float:
    """``n`` JPEGs of CelebA's size and an all-train partition file under ``root``; their mean size in bytes."""
    images = root / FOLDER / IMAGES
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    width, height = SOURCE_SIZE
    for i in range(n):
        coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(SOURCE_SIZE, Image.Resampling.BICUBIC).save(images / f"{i + 1:06d}.jpg",
                                                                                   quality=90)
    (root / FOLDER / PARTITIONS[0]).write_text("".join(f"{i + 1:06d}.jpg 0\n" for i in range(n)))
    return sum(path.stat().st_size for path in images.iterdir()) / n


def fastest(work: Callable[[], object], repeats: int = 3) -> float:
    """The shortest of ``repeats`` timings of ``work()``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic images to write and decode")
    parser.add_argument("--cores", type=int, help="decode on this many of the allowed cores (default: all)")
    args = parser.parse_args()
    if args.cores is not None:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        jpeg_bytes = write_folder(root, args.images)
        start = time.perf_counter()
        load_celeba(root, progress=False)
        decode_s = time.perf_counter() - start
        cached_s = fastest(lambda: load_celeba(root, progress=False))
        x = torch.from_numpy(load_celeba(root, progress=False))
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        torch.set_num_threads(1)  # copies this small contend badly on a busy machine with more threads
        read_s = fastest(lambda: [as_float(x[rows]) for rows in order.split(BATCH)])
        cache_bytes = next((root / FOLDER).glob("*.npy")).stat().st_size
    n = args.images
    print(f"{n} synthetic 178x218 JPEGs (mean {jpeg_bytes / 1e3:.1f} kB), {available_cores()} core(s), "
          f"torch {torch.__version__}")
    print(f"  decode into the cache : {decode_s:.2f} s, {n / decode_s:.0f} images/s "
          f"(train split of {TRAIN_SPLIT}: about {TRAIN_SPLIT / (n / decode_s) / 60:.1f} min)")
    print(f"  cached load           : {cached_s * 1e3:.1f} ms ({cached_s / n * 1e6:.1f} us per image: stats and "
          "a memory map)")
    print(f"  batches of {BATCH} to float: {n / read_s:.0f} images/s (one thread)")
    print(f"  cache                 : {cache_bytes / n:.0f} bytes per image ({VALUES} pixel values + header); "
          f"train split {TRAIN_SPLIT * VALUES / 1e9:.2f} GB ({TRAIN_SPLIT * VALUES / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()

"""CelebA from a folder of real JPEGs written here in the official layout (178x218 aligned images and
list_eval_partition.txt): the round trip to Pillow's own crop and resize, the cache (reused, rebuilt on any
change), every way the folder can be wrong; and the uint8 storage against the same data stored as floats."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaeconverge.cli import main
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import Dataset, as_float, check_data, load_dataset, moments
from vaeconverge.data import celeba as celeba_module
from vaeconverge.engine import train

SPLITS = (0, 0, 1, 0, 2, 0)  # images 1, 2, 4 and 6 are the train split


def face(seed: int, size: tuple[int, int] = (178, 218), mode: str = "RGB") -> Image.Image:
    """A smooth random picture (JPEG-friendly, unlike white noise) of ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    return image.convert(mode)


def write_celeba(root: Path, splits: tuple[int, ...] = SPLITS, partition: str = "list_eval_partition.txt") -> Path:
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(len(splits)):
        face(i).save(folder / f"{i + 1:06d}.jpg", quality=90)
    (root / "celeba" / partition).parent.mkdir(parents=True, exist_ok=True)
    (root / "celeba" / partition).write_text("".join(f"{i + 1:06d}.jpg {s}\n" for i, s in enumerate(splits)))
    return folder


def pillow_reference(path: Path) -> np.ndarray:
    """What the docstring promises, done with Pillow directly: 140x140 centre crop, bilinear resize to 64x64,
    channel-first."""
    with Image.open(path) as image:
        width, height = image.size
        left, top = (width - 140) // 2, (height - 140) // 2
        small = image.crop((left, top, left + 140, top + 140)).resize((64, 64), Image.Resampling.BILINEAR)
    return np.asarray(small).transpose(2, 0, 1).reshape(-1)


def load(root: Path) -> torch.Tensor:
    return load_dataset(RunConfig(data="celeba", data_dir=str(root), batch_size=2), progress=False).x


def caches(root: Path) -> list[Path]:
    return sorted((root / "celeba").glob("*.npy"))


@pytest.mark.parametrize("partition", ["list_eval_partition.txt", "Eval/list_eval_partition.txt"])
def test_the_train_split_round_trips_to_pillows_crop_and_resize(tmp_path, partition):
    folder = write_celeba(tmp_path, partition=partition)
    x = load(tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (4, 3 * 64 * 64)
    expected = np.stack([pillow_reference(folder / f"{i:06d}.jpg") for i in (1, 2, 4, 6)])
    assert np.array_equal(x.numpy(), expected)
    assert len(caches(tmp_path)) == 1 and not list((tmp_path / "celeba").glob("*.part"))


def test_the_cache_is_reused_and_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    folder = write_celeba(tmp_path)
    first = load(tmp_path).clone()
    decoded = []

    def counting(path: Path) -> np.ndarray:
        decoded.append(path.name)
        return real(path)

    real = celeba_module.decode
    monkeypatch.setattr(celeba_module, "decode", counting)
    assert torch.equal(load(tmp_path), first) and decoded == []  # mapped, not decoded

    face(99).save(folder / "000002.jpg", quality=90)  # a training image changes
    os.utime(folder / "000002.jpg", ns=(1, 1))
    second = load(tmp_path)
    assert sorted(decoded) == ["000001.jpg", "000002.jpg", "000004.jpg", "000006.jpg"]
    assert np.array_equal(second[1].numpy(), pillow_reference(folder / "000002.jpg"))
    assert not torch.equal(second[1], first[1]) and torch.equal(second[0], first[0])
    assert len(caches(tmp_path)) == 1  # the stale cache is gone

    decoded.clear()
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {s}\n" for i, s in enumerate((0, 0, 0, 0, 2, 0))))  # image 3 joins the train split
    third = load(tmp_path)
    assert len(decoded) == 5 and len(third) == 5
    assert np.array_equal(third[2].numpy(), pillow_reference(folder / "000003.jpg"))


def test_a_damaged_cache_is_rebuilt_and_an_unwritable_one_is_named(tmp_path, monkeypatch):
    write_celeba(tmp_path)
    first = load(tmp_path).clone()
    (cache,) = caches(tmp_path)
    cache.write_bytes(cache.read_bytes()[:5000])  # cut short, as by a full disk outside our atomic write
    assert torch.equal(load(tmp_path), first) and caches(tmp_path) == [cache]

    cache.unlink()

    def refuse(path: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np.lib.format, "open_memmap", refuse)
    with pytest.raises(ConfigError, match=r"celeba: cannot write the cache .*img_align_celeba_train_64x64_\w+\.npy"
                                          r"\.\d+\.part \(Permission denied\)"):
        load(tmp_path)


def corrupt(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1500])


@pytest.mark.parametrize(("damage", "problem"), [
    (None, "celeba: no folder {root}/celeba/img_align_celeba (expected {root}/celeba/img_align_celeba/"
                        "000001.jpg ... (the aligned images) and {root}/celeba/list_eval_partition.txt"),
    (lambda root: (root / "celeba" / "list_eval_partition.txt").unlink(),
     "celeba: no list_eval_partition.txt in {root}/celeba or {root}/celeba/Eval"),
    (lambda root: corrupt(root / "celeba" / "img_align_celeba" / "000004.jpg"),
     "{root}/celeba/img_align_celeba/000004.jpg: not a readable JPEG (cannot identify image file"),
    (lambda root: truncate(root / "celeba" / "img_align_celeba" / "000004.jpg"),
     "{root}/celeba/img_align_celeba/000004.jpg: not a readable JPEG (image file is truncated"),
    (lambda root: face(0, size=(100, 120)).save(root / "celeba" / "img_align_celeba" / "000006.jpg"),
     "{root}/celeba/img_align_celeba/000006.jpg: expected an aligned CelebA image of 178x218 pixels, found 100x120"),
    (lambda root: face(0, mode="L").save(root / "celeba" / "img_align_celeba" / "000002.jpg"),
     "{root}/celeba/img_align_celeba/000002.jpg: expected an RGB image (3 channels), found mode L (1 channel)"),
    (lambda root: (root / "celeba" / "img_align_celeba" / "000006.jpg").unlink(),
     "{root}/celeba/img_align_celeba/000006.jpg: missing, though list_eval_partition.txt lists it"),
    (lambda root: (root / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg train\n"),
     "{root}/celeba/list_eval_partition.txt: line 2: expected 'IMAGE.jpg SPLIT' with SPLIT 0 (train), 1 (valid) "
     "or 2 (test), found '000002.jpg train'"),
    (lambda root: (root / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 2\n"),
     "list_eval_partition.txt: lists no image of the train split (0)"),
    (lambda root: (root / "celeba" / "list_eval_partition.txt").write_bytes(b"000001.jpg 0\n\xff\xfe\x00 0\n"),
     "{root}/celeba/list_eval_partition.txt: not a text file of 'IMAGE.jpg SPLIT' lines (byte 13 is not UTF-8)"),
])
def test_a_wrong_folder_or_image_is_named(tmp_path, damage, problem):
    root = tmp_path / "data"
    if damage is not None:
        write_celeba(root)
        damage(root)
    with pytest.raises(ConfigError) as info:
        load(root)
    assert problem.format(root=root) in str(info.value)
    assert not root.exists() or (caches(root) == [] and not list((root / "celeba").glob("*.part")))  # none kept


def test_a_partition_file_that_is_not_utf8_is_one_line_from_the_cli(tmp_path, capsys):
    write_celeba(tmp_path / "data")
    partition = tmp_path / "data" / "celeba" / "list_eval_partition.txt"
    partition.write_bytes("000001.jpg 0\n".encode("utf-16"))
    assert main(["train", "--data", "celeba", "--data-dir", str(tmp_path / "data"), "--model", "conv64",
                 "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--data: {partition}: not a text file" in err
    assert not (tmp_path / "run").exists()


def test_a_link_planted_at_the_cache_temporary_name_is_not_written_through(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_celeba(root)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    monkeypatch.setattr(celeba_module.os, "getpid", lambda: 4242)
    real_build = celeba_module._build_cache

    def plant(paths, cache, progress):
        cache.with_name(cache.name + ".4242.part").symlink_to(outside)
        real_build(paths, cache, progress)

    monkeypatch.setattr(celeba_module, "_build_cache", plant)
    assert load(root).shape == (4, 3 * 64 * 64)
    assert outside.read_bytes() == b"precious"
    assert len(caches(root)) == 1 and not list((root / "celeba").glob("*.part"))


def test_data_list_shows_celeba(tmp_path, capsys):
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    assert "absent; looked for " + str(tmp_path / "celeba" / "img_align_celeba") in capsys.readouterr().out
    write_celeba(tmp_path)
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.split()[0] == "celeba")
    assert f"present ({tmp_path / 'celeba' / 'img_align_celeba'})" in line


def test_train_conv64_on_celeba_files_from_the_cli(tmp_path):
    """The paper's CelebA network trains from the standard files (channel-first 3x64x64 images)."""
    write_celeba(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--data", "celeba", "--data-dir", str(tmp_path / "data"), "--model", "conv64",
                 "--latent-dim", "4", "--batch-size", "2", "--steps", "2", "--eval-every", "2", "--no-constants",
                 "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"name": "celeba", "n": 4, "dim": 3 * 64 * 64}
    assert math.isfinite(summary["grad_sq_norm"])


# ------------------------------------------------------------------------------------------- uint8 storage


def pixels_u8(n: int = 96, d: int = 20) -> torch.Tensor:
    return torch.randint(0, 256, (n, d), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


def test_moments_of_pixels_equal_those_of_their_floats():
    u8 = pixels_u8()
    ours, floats = moments(u8), moments(as_float(u8).double())
    for name in ("mean", "var", "std"):
        assert getattr(ours, name).dtype == torch.float32
        torch.testing.assert_close(getattr(ours, name).double(), getattr(floats, name), rtol=1e-6, atol=0)


def test_training_on_uint8_pixels_equals_training_on_their_floats():
    """The oracle for the per-batch and per-chunk conversion: the same run on the same values, stored two ways,
    gives the same metrics and constants, up to float rounding in the data-driven start's moments (relative
    1e-7 here; dividing by 254 instead of 255 would move the objective by 3e-5)."""
    u8 = pixels_u8()
    config = RunConfig(data="pixels", model="mlp", hidden=8, depth=1, latent_dim=2, batch_size=8, steps=16,
                       eval_every=8)
    runs = [train(config, Dataset("pixels", x), progress=False) for x in (u8, as_float(u8))]
    for key, rtol in (("objective", 1e-6), ("grad_sq_norm", 1e-5), ("batch_grad_sq_norm", 1e-5)):
        a, b = ([row[key] for row in run.metrics] for run in runs)
        np.testing.assert_allclose(a, b, rtol=rtol)
    for key in ("L", "sigma2_x", "sigma2_eps", "R", "a"):  # the diagnostics' subsets, converted
        assert runs[0].summary["constants"][key] == pytest.approx(runs[1].summary["constants"][key], rel=1e-5), key


def test_only_floats_and_uint8_pixels_are_data():
    check_data(pixels_u8(), "bernoulli", 4)  # pixels are in [0, 1] once divided by 255, without a scan
    with pytest.raises(ConfigError, match=r"expected floats or uint8 pixels, found dtype torch\.int64"):
        check_data(torch.zeros(4, 3, dtype=torch.int64), "gaussian", 2)


def test_a_paper_study_runs_on_celeba_with_data(tmp_path, monkeypatch):
    """`reproduce --data celeba` swaps the study's digits for CelebA (the folder from VAECONVERGE_DATA); each run
    of the depth study trains on the 64x64 train split."""
    from vaeconverge.sweeps import InProcess, Store, reproduce, run_sweep

    write_celeba(tmp_path / "data")
    monkeypatch.setenv("VAECONVERGE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(reproduce, "QUICK", {"steps": 2, "seeds": [0], "hidden": 8, "batch_size": 2,
                                             "eval_every": 2})
    (depth,) = (spec for spec in reproduce.paper_studies(quick=True, data="celeba") if spec.name == "depth")
    with Store(tmp_path / "r.db") as store:
        assert run_sweep(depth, store, InProcess(), progress=False)["done"] == 3
        assert {run.config.depth for run in store.runs("depth")} == {1, 2, 4}
        assert all(run.summary["data"] == {"name": "celeba", "n": 4, "dim": 3 * 64 * 64}
                   for run in store.runs("depth"))

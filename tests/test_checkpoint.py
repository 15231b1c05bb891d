"""Checkpoints: a trained model survives a save/load exactly; damaged files fail with a clear error."""

import os
from pathlib import Path

import pytest
import torch

from vaeconverge.config import RunConfig, SyntheticConfig
from vaeconverge.data import load_dataset
from vaeconverge.engine import CheckpointError, load_checkpoint, load_model, train
from vaeconverge.engine.checkpoint import atomic_write
from vaeconverge.models import build_vae
from vaeconverge.report.run_folder import write_run

TINY_DATA = SyntheticConfig(n_samples=120, data_dim=5, latent_dim=2, noise_std=0.5, seed=1)
CONFIGS = {
    "linear": RunConfig(data="synthetic-linear", synthetic=TINY_DATA, model="linear", likelihood="gaussian",
                        latent_dim=2, decoder_std=0.7, adam_betas=(0.8, 0.99), batch_size=16, steps=12,
                        eval_every=6, eval_samples=1, seed=3),
    "mlp-learned-variance": RunConfig(data="synthetic-linear", synthetic=TINY_DATA, model="mlp",
                                      likelihood="gaussian", learn_variance=True, latent_dim=2, hidden=8,
                                      depth=1, batch_size=16, steps=12, eval_every=6, eval_samples=1,
                                      optimizer="sgd", momentum=0.5, lr=0.01, seed=5),
}


def run_and_write(config, out_dir):
    result = train(config, load_dataset(config), progress=False)
    write_run(out_dir, result)
    return result


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One tiny trained linear-VAE run written to disk, shared by the corruption tests."""
    out = tmp_path_factory.mktemp("run")
    run_and_write(CONFIGS["linear"], out)
    return out / "checkpoint.pt"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_load_model_restores_trained_state_exactly(tmp_path, name):
    """load_model gives back bit-identical weights and buffers, and the run's configuration."""
    config = CONFIGS[name]
    result = run_and_write(config, tmp_path)
    trained = result.model.state_dict()

    model, loaded_config = load_model(tmp_path / "checkpoint.pt")

    assert type(model) is type(result.model)  # LinearVAE stays LinearVAE
    assert loaded_config == config
    restored = model.state_dict()
    assert list(restored) == list(trained)
    for key, value in trained.items():
        assert restored[key].dtype == value.dtype, key
        assert torch.equal(restored[key], value), key
    # the comparison is not vacuous: training moved the weights away from their initial values
    torch.manual_seed(config.seed)
    start = build_vae(config, TINY_DATA.data_dim)
    start.init_from_data_(result.dataset.x)
    assert any(not torch.equal(p, trained[k]) for k, p in start.named_parameters())


def test_checkpoint_records_step_and_optimizer(saved_run):
    """The raw checkpoint holds the final step, data dimension and optimizer state for resuming."""
    state = load_checkpoint(saved_run)
    config = CONFIGS["linear"]
    assert state["format"] == "vaeconverge-checkpoint-2"
    assert state["step"] == config.steps
    assert state["data_dim"] == TINY_DATA.data_dim
    assert state["config"] == config.to_dict()
    assert state["scheduler"]["last_epoch"] == config.steps
    assert state["optimizer"]["state"]  # Adam moments exist after training


def assert_checkpoint_error(path, words=()):
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message
    return message


def test_truncated_checkpoint(saved_run, tmp_path):
    data = saved_run.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    assert_checkpoint_error(path, ["corrupt or truncated"])


def test_random_bytes_checkpoint(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    assert_checkpoint_error(path, ["corrupt or truncated"])


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "absent" / "checkpoint.pt"
    assert_checkpoint_error(path, ["no such checkpoint"])


def test_directory_is_not_a_checkpoint(tmp_path):
    assert_checkpoint_error(tmp_path, ["no such checkpoint"])


def test_unrelated_torch_file(tmp_path):
    """A perfectly valid torch.save of something else is refused, not half-loaded."""
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(3), "step": 7}, path)
    assert_checkpoint_error(path, ["not a vaeconverge checkpoint"])


def test_unrelated_non_dict_torch_file(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(4), path)
    assert_checkpoint_error(path, ["not a vaeconverge checkpoint"])


def test_weights_that_do_not_fit_the_config(saved_run, tmp_path):
    """A checkpoint whose weights do not match its recorded configuration names the file."""
    state = torch.load(saved_run, weights_only=True)
    state["config"]["latent_dim"] = 3  # the stored weights are for latent_dim=2
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    assert_checkpoint_error(path, ["do not match"])


# ---------------------------------------------------------------------------------------------- atomic_write


class WriteFailed(Exception):
    pass


@pytest.mark.parametrize("error", [WriteFailed, KeyboardInterrupt])
def test_atomic_write_keeps_old_file_when_write_fails(tmp_path, error):
    """A write that dies half-way leaves the previous file untouched and no temporary file behind."""
    path = tmp_path / "summary.json"
    path.write_text("original contents\n")

    def write(tmp):
        tmp.write_text("partial")
        raise error("disk on fire")

    with pytest.raises(error):
        atomic_write(path, write)
    assert path.read_text() == "original contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_atomic_write_failure_creates_nothing_when_no_old_file(tmp_path):
    path = tmp_path / "new.csv"

    def write(tmp):
        tmp.write_text("partial")
        raise WriteFailed

    with pytest.raises(WriteFailed):
        atomic_write(path, write)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_on_success(tmp_path):
    """The control case: a write that succeeds replaces the file and leaves no temporary file."""
    path = tmp_path / "metrics.csv"
    path.write_text("old")
    atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_write_respects_umask(tmp_path):
    """A file written atomically gets the same permissions as one written with a plain open()."""
    old_umask = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic = tmp_path / "atomic.txt"
        atomic_write(atomic, lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(old_umask)
    assert plain.stat().st_mode & 0o777 == 0o644
    assert atomic.stat().st_mode & 0o777 == 0o644


def test_checkpoint_missing_a_section_is_a_checkpoint_error(tmp_path, saved_run):
    """A file with our format marker but without the weights names what is missing."""
    state = torch.load(saved_run, weights_only=True)
    del state["models"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing 'models'") as info:
        load_model(path)
    assert str(path) in str(info.value)


class _Smuggled:
    """What a malicious checkpoint would carry: a call made while it is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_malicious_checkpoint_is_refused_without_running_it_or_suggesting_to_trust_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "vaeconverge-checkpoint-2", "payload": _Smuggled(marker)}, path)
    message = assert_checkpoint_error(path, ["refused", "never contains"])
    assert "weights_only" not in message and "corrupt" not in message
    assert not marker.exists()

"""``--device``: runs train where they are asked to, the data staying on the host, a checkpoint loads onto any
device, and a GPU that is not there is one line. The CUDA tests run only where torch sees a GPU."""

import json
import math

import pytest
import torch

from vaeconverge import runtime
from vaeconverge.cli import main
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.engine import load_model, train
from vaeconverge.sweeps.identity import run_id

CUDA = torch.cuda.is_available()


def needs_cuda(test):
    """Runs on the GPU, and only where there is one."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="no CUDA device")(test))


TINY = {"hidden": 16, "depth": 1, "steps": 30, "eval_points": 3, "seeds": (0, 1)}


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "bbvi"])
def test_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys, command):
    assert main([command, "--device", "cuda", "--steps", "4", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vaeconverge {command}: error: --device: cuda: this machine has no CUDA device")
    assert "\n" not in err and not (tmp_path / "run").exists()


@pytest.mark.cuda
def test_devices_resolve_as_documented():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(ConfigError, match="--device: unknown value 'tpu'"):
        runtime.resolve_device("tpu")
    with pytest.raises(ConfigError, match="--device"):
        RunConfig(device="gpu").validate()


def test_to_device_leaves_a_tensor_already_there_alone():
    x = torch.arange(6).view(2, 3)
    assert runtime.to_device(x, torch.device("cpu")) is x


def test_the_device_does_not_change_a_runs_identity():
    """Where a run executes is not what it computes: a store resumed on a GPU keeps its finished runs."""
    ids = {run_id(RunConfig(device=device)) for device in runtime.DEVICES}
    assert len(ids) == 1


@pytest.mark.skipif(CUDA, reason="auto is the GPU here")
def test_explicit_cpu_is_the_default_here_number_for_number(tmp_path):
    auto = RunConfig(**TINY)
    explicit = RunConfig(**TINY, device="cpu")
    a = train(auto, load_dataset(auto, progress=False), progress=False)
    b = train(explicit, load_dataset(explicit, progress=False), progress=False)
    assert a.summary["device"] == b.summary["device"] == "cpu"
    def numbers(result):  # every measured value (repr, so that NaN equals NaN), not the timings
        return [repr({k: v for k, v in row.items() if k != "seconds"}) for row in result.metrics]

    assert numbers(a) == numbers(b)


def test_cli_writes_the_device_and_a_checkpoint_that_loads_anywhere(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--device", "cpu", "--hidden", "16", "--depth", "1", "--steps", "12", "--quiet",
                 "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["device"] == "cpu"
    for device in ("cpu", "auto"):
        model, config = load_model(out / "checkpoint.pt", device=device)
        assert {p.device.type for p in model.parameters()} == {runtime.resolve_device(device).type}
        assert config.device == "cpu"


@needs_cuda
def test_on_cuda_replica_t_agrees_with_the_single_run_and_loads_on_the_host(tmp_path):
    config = RunConfig(**TINY, device="cuda")
    data = load_dataset(config, progress=False)
    both = train(config, data, progress=False)
    single = train(RunConfig(**{**TINY, "seeds": (1,)}, device="cuda"), data, progress=False)
    assert both.summary["device"].startswith("cuda")
    assert {p.device.type for p in both.ensemble.parameters()} == {"cuda"}
    for a, b in zip([r for r in both.metrics if r["seed"] == 1], single.metrics, strict=True):
        assert a["objective"] == pytest.approx(b["objective"], rel=1e-4)
    both.save_checkpoint(tmp_path / "checkpoint.pt")
    model, _ = load_model(tmp_path / "checkpoint.pt", seed=1, device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


# ------------------------------------------------------------------------------------------------------------ BBVI

BBVI_TINY = {"steps": 20, "eval_points": 3, "eval_samples": 8, "seeds": (0, 1), "constants": False}


@pytest.mark.parametrize("batch_size", [None, 10], ids=["full", "minibatch"])
def test_bbvi_on_an_explicit_device_keeps_every_tensor_there(batch_size):
    from vaeconverge.bbvi.config import BBVIConfig
    from vaeconverge.bbvi.train import train as train_bbvi

    config = BBVIConfig(**BBVI_TINY, batch_size=batch_size, device="cpu")
    result = train_bbvi(config, progress=False)
    assert result.summary["device"] == "cpu"
    assert {p.device.type for p in result.family.parameters()} == {"cpu"}
    if not CUDA:  # auto is the host here: the same numbers
        auto = train_bbvi(BBVIConfig(**BBVI_TINY, batch_size=batch_size), progress=False)
        assert [repr({k: v for k, v in row.items() if k != "seconds"}) for row in auto.metrics] == \
               [repr({k: v for k, v in row.items() if k != "seconds"}) for row in result.metrics]


@needs_cuda
def test_bbvi_on_cuda_moves_the_target_and_family_and_writes_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert main(["bbvi", "--device", "cuda", "--steps", "20", "--batch-size", "10", "--no-constants", "--quiet",
                 "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["device"].startswith("cuda")


def test_memory_is_checked_where_the_run_allocates(monkeypatch):
    """On a GPU the estimate is held against the GPU's free memory, not the host's."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 2**34))
    gpu = torch.device("cuda")
    assert runtime.available_memory(gpu) == 2**30
    runtime.require_memory("--batch-size", 2**29, "a step", gpu)
    with pytest.raises(ConfigError, match=r"--batch-size: a step needs about 2 GiB, more than the 1 GiB of "
                                          r"cuda's memory available"):
        runtime.require_memory("--batch-size", 2**31, "a step", gpu)
    host = runtime.available_memory()
    assert host is None or host > 0


def _binary_images(n: int) -> torch.Tensor:
    return (torch.rand(n, 3 * 32 * 32, generator=torch.Generator().manual_seed(0)) < 0.3).float()


CONV = {"model": "conv32", "latent_dim": 8, "activation": "softclip", "likelihood": "bernoulli", "batch_size": 16,
        "steps": 6, "eval_points": 2, "seeds": (0, 1)}


@needs_cuda
@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_a_conv_run_on_cuda_measures_its_checkpoints_and_constants_there(precision):
    """The conv network's checkpoints and constants probes (Hessian-vector products, Lanczos on the host) on a GPU:
    finite numbers, every parameter left on the device."""
    from vaeconverge.data import Dataset

    config = RunConfig(**CONV, device="cuda", precision=precision)
    result = train(config, Dataset("binary", _binary_images(64)), progress=False)
    assert result.summary["device"].startswith("cuda")
    assert {p.device.type for p in result.ensemble.parameters()} == {"cuda"}
    assert all(math.isfinite(row["grad_sq_norm"]) for row in result.metrics)
    assert all(math.isfinite(value) for value in (result.summary["constants"]["L"],
                                                  result.summary["constants"]["sigma2"]))


@needs_cuda
def test_the_monitor_follows_a_model_on_cuda():
    """A user's loop on a GPU model, its data on the host: the monitor's checkpoints run on the model's device
    and give the numbers the same loop gives on the host, to float32 rounding."""
    from vaeconverge import ConvergenceMonitor

    def run(device: str) -> list[dict[str, float]]:
        torch.manual_seed(0)
        x = torch.rand(128, 20)
        model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 20)).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

        def loss(net, batch):
            return (net(batch) - batch).pow(2).sum(1)

        monitor = ConvergenceMonitor(model, loss, x, 20, optimizer=optimizer, batch_size=16, eval_points=3)
        for step in range(20):
            batch = x[16 * (step % 8): 16 * (step % 8 + 1)].to(device)
            optimizer.zero_grad()
            loss(model, batch).mean().backward()
            optimizer.step()
        return monitor.metrics

    for gpu, host in zip(run("cuda"), run("cpu"), strict=True):
        assert gpu["step"] == host["step"]
        assert gpu["objective"] == pytest.approx(host["objective"], rel=1e-4)
        assert gpu["grad_sq_norm"] == pytest.approx(host["grad_sq_norm"], rel=1e-3)

"""Shared fixtures: small Linear VAEs in float64 for closed-form oracles."""

from __future__ import annotations

import pytest
import torch

from vaeconverge.config import RunConfig
from vaeconverge.models import LinearVAE, build_vae


def make_linear_vae(data_dim: int = 5, latent_dim: int = 2, seed: int = 0, learn_variance: bool = True,
                    std: float = 0.7) -> LinearVAE:
    """A float64 Linear VAE with random (non-optimal) encoder and decoder."""
    torch.manual_seed(seed)
    config = RunConfig(model="linear", likelihood="gaussian", latent_dim=latent_dim,
                       learn_variance=learn_variance, decoder_std=std)
    model = build_vae(config, data_dim).double()
    assert isinstance(model, LinearVAE)
    with torch.no_grad():  # a non-trivial shared encoder covariance
        model.encoder.log_diag.copy_(torch.randn(latent_dim, dtype=torch.float64) * 0.3 - 1.0)
        model.encoder.off_diag.copy_(torch.randn(model.encoder.off_diag.shape, dtype=torch.float64) * 0.2)
    return model


def tiny_sweep(steps: int, eval_every: int, grid: str = "", **base: object) -> str:
    """A sweep file of tiny digits MLPs (8 hidden units, one layer, latent 2, no constants probes): its ``[base]``
    with ``base``'s extra keys, then ``grid``, the ``[grid]`` table's lines, if any."""
    lines = ['name = "tiny"', "[base]", 'data = "digits"', "hidden = 8", "depth = 1", "latent-dim = 2",
             f"steps = {steps}", f"eval_every = {eval_every}", "constants = false",
             *(f"{key} = {value!r}" for key, value in base.items())]
    return "\n".join(lines) + "\n" + (f"[grid]\n{grid}" if grid else "")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The suite's models are tiny: threads gain nothing, and on a busy machine they slow runs many-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def host_unless_marked_cuda(request, monkeypatch):
    """The suite's oracles are computed on the host, so on a GPU machine every test but those marked ``cuda`` runs
    as it does on a machine without one: ``auto`` resolves to the CPU, in this process and in the ones it starts."""
    if torch.cuda.is_available() and request.node.get_closest_marker("cuda") is None:
        torch.cuda.init()  # first, so that hiding the GPU from the processes started below cannot hide it from this one
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def linear_vae() -> LinearVAE:
    return make_linear_vae()


@pytest.fixture
def small_x() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(7, 5, generator=gen, dtype=torch.float64)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test: a Ray driver started earlier in this process (the Ray executor's
    tests) replaces it at the C level, after which a Ctrl-C would never reach Python."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

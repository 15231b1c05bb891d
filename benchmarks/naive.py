"""The naive baseline: a VAE trained the way a typical PyTorch user writes it, in plain PyTorch.

An ``nn.Module`` VAE of the same shape as vaeconverge's model (the MLP with the same layer widths, or the
``conv32`` network with the same conv layers), a ``DataLoader`` over a ``TensorDataset`` (shuffle, drop_last),
Adam, the one-sample ELBO with a Bernoulli likelihood, and every step the gradient norm computed parameter by
parameter with ``.item()``. On a GPU, the model lives there and each batch goes over from pinned host memory (the
loader's ``pin_memory``, then ``.to(device, non_blocking=True)``), as PyTorch's examples do. Not run on its own:
the benchmarks call :func:`time_naive` in a child process.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from harness import Data, Timed, synchronize
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@dataclass(frozen=True)
class NaiveSpec:
    """The network: ``mlp`` (``depth`` hidden layers of ``hidden`` units, ReLU) or ``conv32`` (3x32x32 images,
    soft-clipping with sharpness ``softclip_s``)."""

    kind: str
    latent_dim: int
    hidden: int = 200
    depth: int = 2
    softclip_s: float = 5.0


class SoftClip(nn.Module):
    """Soft-clipping to (low, high): low + softplus_s(x - low) - softplus_s(x - high)."""

    def __init__(self, s: float, low: float = 0.0, high: float = 50.0) -> None:
        super().__init__()
        self.s, self.low, self.high = s, low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + F.softplus(x - self.low, beta=self.s) - F.softplus(x - self.high, beta=self.s)


class NaiveVAE(nn.Module):
    """Encoder body, mean and log-variance heads, decoder producing Bernoulli logits."""

    def __init__(self, body: nn.Module, mean: nn.Module, logvar: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.body, self.mean, self.logvar, self.decoder = body, mean, logvar, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The negative ELBO of the batch, averaged over its examples."""
        h = self.body(x)
        mean, logvar = self.mean(h), self.logvar(h)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        logits = self.decoder(z)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (reconstruction + kl).mean()


def mlp_vae(data_dim: int, spec: NaiveSpec) -> NaiveVAE:
    """data_dim -> hidden (x depth) -> heads latent_dim; decoder latent_dim -> hidden (x depth) -> data_dim."""
    def stack(width: int) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for _ in range(spec.depth):
            layers += [nn.Linear(width, spec.hidden), nn.ReLU()]
            width = spec.hidden
        return layers

    return NaiveVAE(
        nn.Sequential(*stack(data_dim)),
        nn.Linear(spec.hidden, spec.latent_dim),
        nn.Linear(spec.hidden, spec.latent_dim),
        nn.Sequential(*stack(spec.latent_dim), nn.Linear(spec.hidden, data_dim)),
    )


def conv32_vae(spec: NaiveSpec) -> NaiveVAE:
    """3x32x32 -> conv 32, 64, 128 (kernel 4, stride 2, padding 1) -> 2048 -> 256 -> heads; decoder mirrored."""
    s, d = spec.softclip_s, spec.latent_dim
    body = nn.Sequential(
        nn.Conv2d(3, 32, 4, 2, 1), SoftClip(s),
        nn.Conv2d(32, 64, 4, 2, 1), SoftClip(s),
        nn.Conv2d(64, 128, 4, 2, 1), SoftClip(s),
        nn.Flatten(), nn.Linear(2048, 256), SoftClip(s),
    )
    decoder = nn.Sequential(
        nn.Linear(d, 256), SoftClip(s),
        nn.Linear(256, 2048), SoftClip(s),
        nn.Unflatten(1, (128, 4, 4)),
        nn.ConvTranspose2d(128, 64, 4, 2, 1), SoftClip(s),
        nn.ConvTranspose2d(64, 32, 4, 2, 1), SoftClip(s),
        nn.ConvTranspose2d(32, 3, 4, 2, 1),
    )
    mean = nn.Sequential(nn.Linear(256, d), SoftClip(s, -50.0, 50.0))
    logvar = nn.Sequential(nn.Linear(256, d), SoftClip(s, -20.0, 20.0))
    return NaiveVAE(body, mean, logvar, decoder)


def train_naive(x: torch.Tensor, spec: NaiveSpec, steps: int, batch_size: int, lr: float, seed: int,
                device: str = "cpu") -> list[float]:
    """Train one VAE on ``device`` for ``steps`` steps; returns the gradient norm of every step."""
    torch.manual_seed(seed)
    model = (mlp_vae(x.shape[1], spec) if spec.kind == "mlp" else conv32_vae(spec)).to(device)
    loader = DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True, drop_last=True,
                        pin_memory=device != "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    grad_norms: list[float] = []
    while len(grad_norms) < steps:
        for (batch,) in loader:
            loss = model(batch.to(device, non_blocking=True))
            optimizer.zero_grad()
            loss.backward()
            grad_norms.append(math.sqrt(sum(p.grad.norm().item() ** 2 for p in model.parameters())))
            optimizer.step()
            if len(grad_norms) == steps:
                break
    return grad_norms


def time_naive(data: Data, spec: NaiveSpec, steps: int, batch_size: int, lr: float, seeds: tuple[int, ...],
               warmup_steps: int, device: str = "cpu") -> Timed:
    """One naive run per seed on ``device``, one after another; the data come in the loop's natural shape (images
    for conv) and stay on the host."""
    x = data.load()
    if spec.kind == "conv32":
        x = x.view(-1, 3, 32, 32)
    train_naive(x, spec, warmup_steps, batch_size, lr, seed=10_000, device=device)
    start = time.perf_counter()
    for seed in seeds:
        train_naive(x, spec, steps, batch_size, lr, seed, device)
    synchronize(device)
    return Timed(time.perf_counter() - start, steps * len(seeds))

"""A conv VAE written the usual way, trained by a plain PyTorch loop, watched by vaeconverge's ConvergenceMonitor.

The model, loss and loop are the user's own; the monitor only needs the model, a per-example loss and the data.
Run: ``.venv/bin/python examples/conv_vae.py --out runs/monitor-conv-vae`` (about 15 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vaeconverge import ConvergenceMonitor
from vaeconverge.optim import AdamDefossez
from vaeconverge.report.readings import bound_text, grad_text, rate_text


class ConvVAE(nn.Module):
    """Encoder 1x8x8 -> 16x4x4 -> 32x2x2 -> (mean, log-variance); a mirrored transposed-conv decoder (logits)."""

    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU(),
                                     nn.Flatten(), nn.Linear(128, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 128), nn.SiLU(), nn.Unflatten(1, (32, 2, 2)),
                                     nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(16, 1, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)  # reparameterisation: torch's global RNG
        return self.decoder(z), mean, logvar


def negative_elbo(model: ConvVAE, batch: list[torch.Tensor]) -> torch.Tensor:
    """Per-example negative ELBO (Bernoulli decoder, one sample), to be minimised: shape (B,)."""
    (x,) = batch
    logits, mean, logvar = model(x)
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(1)
    return reconstruction + kl


def main(steps: int = 1500, out: str | Path = "runs/monitor-conv-vae", constants: bool = True) -> dict[str, Any]:
    """Train the conv VAE on the 8x8 digits with Adam (the recursion the bound covers) and write the monitor's
    outputs into ``out``."""
    torch.manual_seed(0)
    images = torch.as_tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    loader = DataLoader(TensorDataset(images), batch_size=64, shuffle=True, drop_last=True)
    model = ConvVAE()
    # the Adam recursion that Defossez et al.'s bound covers (torch.optim.Adam's step is 1/(1 - beta1^n) larger)
    optimizer = AdamDefossez(model.parameters(), lr=1e-3)
    # the monitor hooks optimizer.step(); the step-0 checkpoint is taken now, before training moves anything
    monitor = ConvergenceMonitor(model, negative_elbo, loader, steps, optimizer=optimizer, constants=constants)

    step = 0
    while step < steps:
        for batch in loader:
            loss = negative_elbo(model, batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    monitor.write(out)
    return monitor.summary()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default="runs/monitor-conv-vae")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a model this small steps fastest on one thread
    summary = main(args.steps, args.out)
    print(f"objective {summary['objective']:.4g}, {grad_text(summary)}; outputs in {args.out}")
    print(f"  rate: {rate_text(summary['rate'])}")
    print(f"  bound: {bound_text(summary['bound'])}")

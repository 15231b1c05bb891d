"""Not a VAE: a small MLP classifier trained by SGD with gamma_n = lr / sqrt(n), watched by ConvergenceMonitor.

The monitor works for any model and per-example loss; here cross-entropy, with Ghadimi & Lan's SGD bound.
Run: ``.venv/bin/python examples/classifier.py --out runs/monitor-classifier`` (a few seconds on 2 CPU cores).
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
from vaeconverge.report.readings import bound_text, grad_text, rate_text


def cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-example cross-entropy of the digit labels: shape (B,)."""
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def main(steps: int = 2000, out: str | Path = "runs/monitor-classifier", constants: bool = True) -> dict[str, Any]:
    """Train a 64-32-10 classifier on the digits with SGD and write the monitor's outputs into ``out``."""
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.as_tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.as_tensor(digits.target)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: (n + 1) ** -0.5)
    batch_size = 32
    # the full objective is evaluated over this loader (in any order: it is a mean); B is the training batch size
    everything = DataLoader(TensorDataset(x, y), batch_size=512)
    # cross-entropy is never negative: a floor that makes the bound's delta provable
    monitor = ConvergenceMonitor(model, cross_entropy, everything, steps, batch_size=batch_size, constants=constants,
                                 objective_floor=0.0)

    for _ in range(steps):
        index = torch.randint(len(x), (batch_size,))
        loss = cross_entropy(model, (x[index], y[index])).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(optimizer)  # after optimizer.step(), before the schedule moves the step size
        schedule.step()
    monitor.write(out)
    return monitor.summary()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="runs/monitor-classifier")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a model this small steps fastest on one thread
    summary = main(args.steps, args.out)
    print(f"objective {summary['objective']:.4g}, {grad_text(summary)}; outputs in {args.out}")
    print(f"  rate: {rate_text(summary['rate'])}")
    print(f"  bound: {bound_text(summary['bound'])}")

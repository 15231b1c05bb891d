"""What ConvergenceMonitor costs a user's loop: loop time with the monitor (default checkpoints, constants off,
then on) over loop time without it, on two models of the README's examples: the conv VAE (Adam, B = 64, its
DataLoader) and the project's digits MLP VAE driven by a plain loop (B = 64, in-memory batches).

Variants run round-robin for ``--repeats`` rounds in this process, each keeping its fastest time, on one thread.
Run: ``.venv/bin/python benchmarks/monitor_overhead.py [--steps 1500] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from vaeconverge import ConvergenceMonitor, RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.models import build_vae
from vaeconverge.objectives import build_objective, draw_noise

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _conv_vae_setup(steps: int) -> tuple[torch.nn.Module, Callable, DataLoader]:
    spec = importlib.util.spec_from_file_location("conv_vae", EXAMPLES / "conv_vae.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)
    loader = DataLoader(TensorDataset(images), batch_size=64, shuffle=True, drop_last=True)
    return example.ConvVAE(), example.negative_elbo, loader


def _mlp_vae_setup(steps: int) -> tuple[torch.nn.Module, Callable, DataLoader]:
    config = RunConfig(data="digits")
    x = load_dataset(config).x
    model = build_vae(config, x.shape[1])
    model.init_from_data_(x)
    objective = build_objective(config)

    def negative_elbo(m: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        (xb,) = batch
        return -objective(m, xb, draw_noise(objective.samples, len(xb), m.latent_dim, dtype=xb.dtype))

    return model, negative_elbo, DataLoader(TensorDataset(x), batch_size=64, shuffle=True, drop_last=True)


def time_loop(setup: Callable, steps: int, monitor: str) -> tuple[float, int]:
    """Seconds of ``steps`` Adam steps, with no monitor, or one with constants ``off`` or ``on``."""
    torch.manual_seed(0)
    model, loss_fn, loader = setup(steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    checkpoints = 0
    if monitor != "none":
        watcher = ConvergenceMonitor(model, loss_fn, loader, steps, optimizer=optimizer, constants=monitor == "on")
        checkpoints = len(watcher.checkpoints)
    step = 0
    while step < steps:
        for batch in loader:
            loss = loss_fn(model, batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    if monitor != "none":
        watcher.summary()
    return time.perf_counter() - start, checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, setup in (("conv VAE (examples/conv_vae.py)", _conv_vae_setup),
                        ("digits MLP VAE (build_vae defaults)", _mlp_vae_setup)):
        best = {"none": float("inf"), "off": float("inf"), "on": float("inf")}
        checkpoints = 0
        for _ in range(args.repeats):
            for variant in best:
                seconds, count = time_loop(setup, args.steps, variant)
                best[variant] = min(best[variant], seconds)
                checkpoints = max(checkpoints, count)
        print(f"{name}, {args.steps} steps, {checkpoints} checkpoints: plain loop {best['none']:.2f} s; "
              f"with the monitor {best['off']:.2f} s (x{best['off'] / best['none']:.3f}); "
              f"with constants too {best['on']:.2f} s (x{best['on'] / best['none']:.3f})")


if __name__ == "__main__":
    main()

"""Does ``torch.compile`` pay for vaeconverge's training step on this CPU? (Why there is no ``--compile`` flag.)

Times the ensemble's step (objective, backward, fused Adam) on the digits MLP, eager and with the objective
compiled by ``torch.compile`` (inductor), for T = 1 and T = 8 replicas, side by side in one process, and
prints the compile time, both step times and the number of steps after which compiling would break even.
Run: ``.venv/bin/python benchmarks/compile_probe.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from vaeconverge.config import RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.engine.train import build_ensemble
from vaeconverge.optim import build_optimizer


def step_time(step: Callable[[], None], steps: int) -> tuple[float, float]:
    """(seconds of the first two calls, which include any compilation; mean seconds per later call)."""
    start = time.perf_counter()
    step()
    step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - start) / steps


def compare(x: torch.Tensor, replicas: int, steps: int) -> str:
    """One line: eager vs compiled step time of ``replicas`` digits MLPs, and the break-even point."""
    ensemble, _ = build_ensemble(RunConfig(seeds=tuple(range(replicas))), x)
    optimizer = build_optimizer("adam", ensemble.parameters(), 1e-3)
    batch = x[:64].expand(replicas, -1, -1).contiguous()
    eps = torch.randn(replicas, 1, 64, ensemble.latent_dim)

    def step(values: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            loss = -values(batch, eps).mean(-1)
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
        return run

    _, eager = step_time(step(ensemble), steps)
    first, fast = step_time(step(torch.compile(ensemble.__call__)), steps)
    even = f"{first / (eager - fast):,.0f} steps" if eager > fast else "never"
    return (f"T = {replicas}, {torch.get_num_threads()} thread(s): eager {eager * 1e3:.2f} ms/step, compiled "
            f"{fast * 1e3:.2f} ms/step (x{eager / fast:.2f}) after {first:.1f} s of compilation; "
            f"breaks even after {even}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    x = load_dataset(RunConfig()).x
    cores = torch.get_num_threads()
    print(f"torch {torch.__version__}; digits MLP, B = 64; {args.steps} timed steps after two warm-up calls")
    for replicas, threads in ((1, 1), (8, cores)):  # the engine's own thread choice for these sizes
        torch.set_num_threads(threads)
        print(compare(x, replicas, args.steps), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark 5: achieved GFLOP/s of vaeconverge's MLP training step against this machine's dense matmul
GFLOP/s (a 1024 x 1024 fp32 matmul), both measured in the same run with the same thread count.

The FLOPs of one step (forward and backward of the objective on one batch) are counted with
``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix products; elementwise work and the
optimizer update are not counted. The step time is that of ``train`` with diagnostics reduced to the first and
last step. Reported as a fraction of the matmul rate: the digits MLP of the defaults (B = 64), and, for
information, Pythae's shape (784 -> 512 -> 16, B = 256).
Run: ``.venv/bin/python benchmarks/flops.py [--quick]`` (or ``run_all.py``).
"""

from __future__ import annotations

import math
from typing import Any

from harness import (
    BASELINE_MLP,
    MATMUL_SIZE,
    Data,
    Measurement,
    Ratio,
    Result,
    Settings,
    Timed,
    Variant,
    first_last,
    main,
    measure_all,
    time_matmul,
    time_vaeconverge,
)
from torch.utils.flop_counter import FlopCounterMode

from vaeconverge.config import RunConfig
from vaeconverge.models import build_vae
from vaeconverge.objectives import build_objective, draw_noise

NAME = "B5 MLP step GFLOP/s vs matmul"


def step_flops(data: Data, options: dict[str, Any]) -> int:
    """FLOPs of the forward and backward pass of the objective on one batch, for vaeconverge's model."""
    config = RunConfig(**options)
    x = data.load()
    model = build_vae(config, x.shape[1])
    model.init_from_data_(x)
    batch = x[: config.batch_size]
    eps = draw_noise(config.samples, config.batch_size, config.latent_dim)
    with FlopCounterMode(display=False) as counter:
        (-build_objective(config)(model, batch, eps).mean()).backward()
    return counter.get_total_flops()


def time_training_step(data: Data, options: dict[str, Any], warmup_steps: int) -> Timed:
    """``train`` with minimal diagnostics, and the GFLOP/s its steps achieve."""
    flops = step_flops(data, options)
    timed = time_vaeconverge(data, options | first_last(options["steps"]), warmup_steps)
    return Timed(timed.seconds, timed.steps, {"GFLOP/step": flops / 1e9, "GFLOP/s": flops * timed.steps
                                              / timed.seconds / 1e9})


def fraction_of_peak(label: str, step: Measurement, matmul: Measurement) -> Ratio:
    peak = matmul.extra.get("GFLOP/s", math.nan)
    return Ratio(label, step.extra.get("GFLOP/s", math.nan) / peak, percent=True)


def run(settings: Settings) -> Result:
    steps, reps, warmup = (200, 20, 20) if settings.quick else (2000, 200, 100)
    wide_options = {"model": "mlp", "hidden": 512, "depth": 1, "latent_dim": 16, "batch_size": 256,
                    "steps": steps} | BASELINE_MLP
    matmul, digits, wide = measure_all([
        Variant(f"matmul {MATMUL_SIZE}x{MATMUL_SIZE} fp32 (steps = products)", time_matmul, (MATMUL_SIZE, reps)),
        Variant("vaeconverge digits MLP 64-200-200-10, B=64", time_training_step,
                (Data("digits"), {"data": "digits", "steps": steps} | BASELINE_MLP, warmup)),
        Variant("vaeconverge MLP 784-512-16, B=256", time_training_step,
                (Data("binary", n=2560, dim=784, seed=5), wide_options, warmup)),
    ], settings)
    return Result(NAME, [matmul, digits, wide], [
        fraction_of_peak("digits MLP step / matmul GFLOP/s", digits, matmul),
        fraction_of_peak("784-512-16 MLP step / matmul GFLOP/s", wide, matmul),
    ])


if __name__ == "__main__":
    main(run, __doc__)

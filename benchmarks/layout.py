"""Benchmark 9: the ensemble's two layouts side by side on the benchmarks' ``--device``: all replicas in one
vectorised pass over stacked parameters, against one replica after another, for 8 seeds of the digits MLP (B = 64)
and of a 784-512-16 MLP (B = 256, random binary data). Both layouts train the same replicas with checkpoints at the
first and last step only, and the ratio is of the training steps' time (the checkpoints taken out);
``engine/plan.py`` picks one of them (on a GPU, every stackable model is vectorised;
on a CPU, a step above ``LOOP_FLOPS`` is looped), and this is the measurement that choice rests on. No target.
Run: ``.venv/bin/python benchmarks/layout.py [--quick] [--repeats N] [--device cpu|cuda]``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from harness import (
    BASELINE_MLP,
    Data,
    Ratio,
    Result,
    Settings,
    Timed,
    Variant,
    first_last,
    main,
    measure_all,
    time_vaeconverge,
    training_seconds,
)

NAME = "B9 vectorised vs looped replicas"
SEEDS = tuple(range(8))


def time_layout(data: Data, options: dict[str, Any], warmup_steps: int, vectorised: bool) -> Timed:
    """:func:`harness.time_vaeconverge` with the layout forced: the plan the engine makes, ``vectorised`` replaced."""
    engine = importlib.import_module("vaeconverge.engine.train")  # the module, which the package's train shadows
    chosen = engine.plan
    engine.plan = lambda *args, **kwargs: dataclasses.replace(chosen(*args, **kwargs), vectorised=vectorised)
    return time_vaeconverge(data, options, warmup_steps)


def run(settings: Settings) -> Result:
    quick = settings.quick
    workloads = {
        "digits MLP": (Data("digits"), {"data": "digits", "batch_size": 64, "steps": 20 if quick else 500}),
        "784-512-16 MLP": (Data("binary", n=4096, dim=784, seed=3),
                           {"batch_size": 256, "hidden": 512, "depth": 1, "latent_dim": 16,
                            "steps": 10 if quick else 200}),
    }
    variants = []
    for name, (data, options) in workloads.items():
        options = options | BASELINE_MLP | first_last(options["steps"]) | {"seeds": SEEDS, "device": settings.device}
        variants += [Variant(f"{name}, T={len(SEEDS)}, {layout}", time_layout,
                             (data, options, 2, layout == "vectorised")) for layout in ("vectorised", "looped")]
    measured = measure_all(variants, settings)
    pairs = zip(measured[::2], measured[1::2], strict=True)
    return Result(NAME, measured, [Ratio(f"{name}: training steps, vectorised over looped",
                                         training_seconds(looped) / training_seconds(vectorised))
                                   for name, (vectorised, looped) in zip(workloads, pairs, strict=True)])


if __name__ == "__main__":
    main(run, __doc__)

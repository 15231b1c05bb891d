"""Benchmark 4: what vaeconverge's full-gradient diagnostics cost at their default interval (checkpoints whose
full-data passes, two replicates each, are budgeted at 5% of the examples training sees, at least 6; each the
gradient of the objective over all the data). Target: <= 10% of training time.

Each model is trained with the full-gradient checkpoints reduced to the first and last step and with the default
checkpoints (constants probes off in both, since this benchmark is about the checkpoints); the overhead is read
twice: side by side (the two runs' times) and in-run (the default run's own time in its checkpoints beyond the
first and last, from ``diagnostics_seconds``, against the rest of its time), which a busy machine disturbs less.
Models: the digits MLP VAE of the defaults (3000 steps), whose small steps are dominated by per-operation
overhead, and the 784-512-16 MLP at B = 256 on 2560 binary images, whose steps are compute-bound, the case where
a full-data gradient costs most relative to a step: 3000 steps, where the budget sets 8 checkpoints (the target),
and 1000 steps, where the floor of 6 checkpoints costs more than the budget (for information). The constants
probes (L, sigma^2, R at the start, middle and end; on by default) are timed once more on the digits MLP and
reported as a fraction of the same minimal-diagnostics time.
Run: ``.venv/bin/python benchmarks/diagnostics_overhead.py [--quick]`` (or ``run_all.py``).
"""

from __future__ import annotations

import math
from typing import Any

from harness import (
    BASELINE_MLP,
    FIRST_LAST,
    Data,
    Measurement,
    Ratio,
    Result,
    Settings,
    Variant,
    first_last,
    main,
    measure_all,
    time_vaeconverge,
)

NAME = "B4 full-gradient diagnostics overhead"
TARGET = 0.10
WIDE = {"model": "mlp", "hidden": 512, "depth": 1, "latent_dim": 16, "batch_size": 256} | BASELINE_MLP


def fraction(label: str, extra_seconds: float, of_seconds: float, maximum: float | None) -> Ratio:
    """``extra_seconds / of_seconds``, met when at most ``maximum`` (no target if None)."""
    value = extra_seconds / of_seconds
    if maximum is None:
        return Ratio(label, value, percent=True)
    met = value <= maximum if math.isfinite(value) else None
    return Ratio(label, value, percent=True, target=f"<= {100 * maximum:g}%", met=met)


def in_run(label: str, default: Measurement, maximum: float | None) -> Ratio:
    """The default run's time in its checkpoints other than the first and last (each a full-data pass of one
    cost) over the rest of its time: the side-by-side overhead, read inside one process."""
    if default.error is not None:
        return Ratio(label, math.nan, percent=True)
    count, spent = default.extra["checkpoints"], default.extra["checkpoints_s"]
    extra = spent * (count - 2) / count
    return fraction(label, extra, default.seconds - extra, maximum)


def run(settings: Settings) -> Result:
    quick = settings.quick
    models: list[tuple[str, Data, dict[str, Any], int, float | None]] = [
        ("digits MLP", Data("digits"), {"data": "digits", "steps": 200 if quick else 3000} | BASELINE_MLP,
         20 if quick else 100, TARGET),
        ("784-512-16 MLP, 3000 steps", Data("binary", n=512 if quick else 2560, dim=784, seed=4),
         WIDE | {"steps": 60 if quick else 3000}, 2 if quick else 10, TARGET),
        ("784-512-16 MLP, 1000 steps (the floor of 6 checkpoints)", Data("binary", n=512 if quick else 2560, dim=784,
                                                                          seed=4),
         WIDE | {"steps": 20 if quick else 1000}, 2 if quick else 10, None),
    ]
    variants = []
    for name, data, options, warmup, _ in models:
        variants += [
            Variant(f"{name}, {FIRST_LAST} (eval_every=steps), constants off", time_vaeconverge,
                    (data, options | first_last(options["steps"]), warmup)),
            Variant(f"{name}, default checkpoints, constants off", time_vaeconverge,
                    (data, options | {"constants": False}, warmup)),
        ]
    name, data, options, warmup, _ = models[0]
    variants.append(Variant(f"{name}, default checkpoints, constants on (all defaults)", time_vaeconverge,
                            (data, options, warmup)))
    measured = measure_all(variants, settings)
    ratios = []
    for (name, _, _, _, target), minimal, default in zip(models, measured[0:-1:2], measured[1:-1:2], strict=True):
        ratios += [fraction(f"{name}: full-gradient checkpoints / minimal-diagnostics time, side by side",
                            default.seconds - minimal.seconds, minimal.seconds, target),
                   in_run(f"{name}: the same, in-run", default, target)]
    digits_minimal, digits_default, probes = measured[0], measured[1], measured[-1]
    ratios.append(fraction("digits MLP: constants probes / minimal-diagnostics time",
                           probes.seconds - digits_default.seconds, digits_minimal.seconds, None))
    return Result(NAME, measured, ratios)


if __name__ == "__main__":
    main(run, __doc__)

"""Benchmark 4: what vaeconverge's full-gradient diagnostics cost at their default interval (about 40
log-spaced checkpoints, each the gradient of the objective over all the data). Target: <= 10% of training time.

The digits MLP VAE (vaeconverge's defaults, 3000 steps) trains three times, each in its own process: with the
full-gradient checkpoints reduced to the first and last step, with the default checkpoints, and with the
default checkpoints plus the constants probes (L, sigma^2, R at the start, middle and end; on by default).
The first two both have the probes off, since this benchmark is about the full-gradient checkpoints; the
probes' own cost is reported on a separate line, as a fraction of the same minimal-diagnostics time.
Run: ``.venv/bin/python benchmarks/diagnostics_overhead.py [--quick]`` (or ``run_all.py``).
"""

from __future__ import annotations

import math

from harness import FIRST_LAST, Data, Measurement, Ratio, Result, first_last, main, measure, time_vaeconverge

NAME = "B4 full-gradient diagnostics overhead"
TARGET = 0.10


def fraction(label: str, extra_seconds: float, of_seconds: float, maximum: float | None) -> Ratio:
    """``extra_seconds / of_seconds``, met when at most ``maximum`` (no target if None)."""
    value = extra_seconds / of_seconds
    if maximum is None:
        return Ratio(label, value, percent=True)
    met = value <= maximum if math.isfinite(value) else None
    return Ratio(label, value, percent=True, target=f"<= {100 * maximum:g}%", met=met)


def run(quick: bool, threads: int, timeout_s: float) -> Result:
    steps, warmup = (200, 20) if quick else (3000, 100)
    data = Data("digits")
    options = {"data": "digits", "steps": steps}

    def variant(label: str, **diagnostics: object) -> Measurement:
        return measure(label, time_vaeconverge, data, options | diagnostics, warmup,
                       threads=threads, timeout_s=timeout_s)

    minimal = variant(f"{FIRST_LAST} (eval_every=steps), constants off", **first_last(steps))
    default = variant("default checkpoints, constants off", constants=False)
    probes = variant("default checkpoints, constants on (all defaults)")
    return Result(NAME, [minimal, default, probes], [
        fraction("full-gradient checkpoints / minimal-diagnostics time", default.seconds - minimal.seconds,
                 minimal.seconds, TARGET),
        fraction("constants probes / minimal-diagnostics time", probes.seconds - default.seconds,
                 minimal.seconds, None),
    ])


if __name__ == "__main__":
    main(run, __doc__)

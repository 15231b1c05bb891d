"""Benchmark 10: what keeping freed memory in the process gains (``runtime.retained_heap``, glibc's malloc),
against glibc's default, which hands a large freed block back to the kernel and faults it in again, a page at a
time, when it is next allocated. Two runs, each with the heap kept and handed back, side by side:

- conv32 (latent 100, soft-clipping, B = 256, Adam) on 512 random binary 3x32x32 images, 20 steps with
  checkpoints at the first and last step: its activations are larger than glibc's largest threshold;
- 8 seeds of the digits MLP (B = 64, 2000 steps) with the default checkpoints, whose passes over the data hold
  more than glibc keeps.

Ratios: training steps' time (checkpoints taken out) and the checkpoints' time, handed back over kept.
No target. Run: ``.venv/bin/python benchmarks/heap.py [--quick] [--repeats N]``.
"""

from __future__ import annotations

import contextlib
import resource
from typing import Any

from harness import (
    BASELINE_MLP,
    DEFAULT_DIAGNOSTICS,
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

NAME = "B10 freed memory kept vs handed back"
CONV32 = {"model": "conv32", "latent_dim": 100, "activation": "softclip", "likelihood": "bernoulli",
          "batch_size": 256, "optimizer": "adam", "lr": 1e-3}


def time_with_faults(data: Data, options: dict[str, Any], warmup: int, kept: bool) -> Timed:
    """:func:`harness.time_vaeconverge`, with the heap kept (vaeconverge's default) or handed back as glibc
    does by default; extras: the minor page faults of the whole process (data, warm-up run and run)."""
    if not kept:
        from vaeconverge import runtime

        runtime.retained_heap = contextlib.nullcontext  # this process only: each variant has its own
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    timed = time_vaeconverge(data, options, warmup)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return Timed(timed.seconds, timed.steps, {**timed.extra, "process page faults": faults})


def run(settings: Settings) -> Result:
    conv_steps, digits_steps = (3, 100) if settings.quick else (20, 2000)
    conv = (Data("binary", n=256 if settings.quick else 512, dim=3 * 32 * 32, seed=2),
            CONV32 | {"steps": conv_steps, "device": settings.device} | first_last(conv_steps), 2)
    digits = (Data("digits"), {"data": "digits", "batch_size": 64, "steps": digits_steps, "seeds": tuple(range(8)),
                               "device": settings.device} | BASELINE_MLP | DEFAULT_DIAGNOSTICS, 50)
    cases = (("conv32, first/last checkpoints", conv), ("8 digits MLPs, default checkpoints", digits))
    variants = [Variant(f"{name}, freed memory {'kept' if kept else 'handed back'}", time_with_faults, (*case, kept))
                for name, case in cases for kept in (True, False)]
    measured = measure_all(variants, settings)
    ratios = []
    for name, (kept, returned) in zip(("conv32", "8 digits MLPs"), (measured[:2], measured[2:]), strict=True):
        ratios.append(Ratio(f"{name}: training steps, handed back / kept",
                            training_seconds(returned) / training_seconds(kept)))
        ratios.append(Ratio(f"{name}: checkpoints, handed back / kept",
                            returned.extra.get("checkpoints_s", float("nan")) / kept.extra.get("checkpoints_s",
                                                                                              float("nan"))))
    return Result(NAME, measured, ratios)


if __name__ == "__main__":
    main(run, __doc__)

"""Benchmark 2: the paper's CIFAR-100 conv VAE (``conv32``: latent 100, soft-clipping s = 5, Bernoulli, B = 256,
Adam) on random binary 3x32x32 images, flattened to (N, 3072): steps per second of vaeconverge with its
full-gradient diagnostics on (default interval; constants probes off) against the naive loop (``naive.py``)
with the same conv layers. Target: >= 1.0x.

The default diagnostics' full-data gradient checkpoints are budgeted against the examples the run trains
on (at least 6 of them), so the ratio depends on N and on the run's length; both are fixed below.
vaeconverge runs once more with the diagnostics reduced to the first and last step, for information.
``--quick`` only checks that the benchmark works: its "default" run has 5 checkpoints.
Run: ``.venv/bin/python benchmarks/conv32_vs_naive.py [--quick]`` (or ``run_all.py``).
"""

from __future__ import annotations

from typing import Any

from harness import Data, Result, Settings, Variant, against_baseline, main, time_vaeconverge
from naive import NaiveSpec, time_naive

NAME = "B2 conv32, diagnostics on, vs naive"
MODEL = {"model": "conv32", "latent_dim": 100, "activation": "softclip", "softclip_s": 5.0,
         "likelihood": "bernoulli", "batch_size": 256, "optimizer": "adam", "lr": 1e-3}
TARGET = 1.0


def run(settings: Settings) -> Result:
    n, steps, warmup = (512, 10, 2) if settings.quick else (2560, 300, 5)
    data = Data("binary", n=n, dim=3 * 32 * 32, seed=2)

    def ours(label: str, diagnostics: dict[str, Any]) -> Variant:
        options = MODEL | {"steps": steps, "device": settings.device} | diagnostics
        return Variant(f"vaeconverge, {label}", time_vaeconverge, (data, options, warmup))

    naive = Variant("naive loop", time_naive, (data, NaiveSpec("conv32", latent_dim=100, softclip_s=5.0), steps,
                                               256, 1e-3, (0,), warmup, settings.device))
    return against_baseline(NAME, naive, ours, "naive", steps, settings, TARGET)


if __name__ == "__main__":
    main(run, __doc__)

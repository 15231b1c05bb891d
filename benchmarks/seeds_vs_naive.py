"""Benchmark 1: T = 8 seeds of the digits MLP VAE (B = 64, 2000 steps) trained by vaeconverge in one vectorised
pass, against 8 sequential runs of the naive loop (``naive.py``) on the same data. Target: >= 4x (issue 20).

Both sides train 8 x 2000 steps. vaeconverge runs with its default full-gradient diagnostics, constants probes
off (``--quick``: 5 checkpoints), and, for information, once with them reduced to the first and last step and
on a CPU once keeping denormal floats (``--denormals keep``), which shows what flushing them gains.
Run: ``.venv/bin/python benchmarks/seeds_vs_naive.py [--quick]`` (or ``run_all.py``).
"""

from __future__ import annotations

from typing import Any

from harness import BASELINE_MLP, Data, Result, Settings, Variant, against_baseline, main, time_vaeconverge
from naive import NaiveSpec, time_naive

NAME = "B1 8 seeds vs 8 naive runs"
SEEDS = tuple(range(8))
TARGET = 4.0


def run(settings: Settings) -> Result:
    steps, warmup = (200, 10) if settings.quick else (2000, 50)
    data = Data("digits")

    def ours(label: str, diagnostics: dict[str, Any]) -> Variant:
        options = ({"data": "digits", "batch_size": 64, "steps": steps, "seeds": SEEDS, "device": settings.device}
                   | BASELINE_MLP | diagnostics)
        return Variant(f"vaeconverge T={len(SEEDS)}, {label}", time_vaeconverge, (data, options, warmup))

    naive = Variant(f"naive loop, {len(SEEDS)} runs one after another", time_naive,
                    (data, NaiveSpec("mlp", latent_dim=10), steps, 64, 1e-3, SEEDS, warmup, settings.device))
    denormals = [("denormals kept (IEEE arithmetic)", {"denormals": "keep"})] if settings.device == "cpu" else []
    return against_baseline(NAME, naive, ours, "naive", steps, settings, TARGET, also=denormals)


if __name__ == "__main__":
    main(run, __doc__)

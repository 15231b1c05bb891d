"""Benchmark 8: the constants probes (L by Lanczos over Hessian-vector products, sigma^2 and R from per-example
gradients, at steps 0, n/2 and n) on the paper's CIFAR-100 conv VAE (``conv32``: latent 100, soft-clipping,
Bernoulli, B = 256, Adam) on random binary 3x32x32 images: a short run with the probes against the same run
without them, checkpoints at the first and last step in both. The probes' memory beyond training is sized by
``DIAGNOSTICS_BYTES`` (``engine/plan.py``): target, the peak's difference within that budget.
Run: ``.venv/bin/python benchmarks/probe_memory.py [--quick] [--repeats N]``.
"""

from __future__ import annotations

from harness import Data, Ratio, Result, Settings, Variant, first_last, main, measure_all, time_vaeconverge

NAME = "B8 conv32 constants probes: memory"
MODEL = {"model": "conv32", "latent_dim": 100, "activation": "softclip", "likelihood": "bernoulli",
         "batch_size": 256, "optimizer": "adam", "lr": 1e-3}


def run(settings: Settings) -> Result:
    from vaeconverge.engine.plan import DIAGNOSTICS_BYTES

    n, steps = (64, 2) if settings.quick else (600, 2)
    data = Data("binary", n=n, dim=3 * 32 * 32, seed=2)
    options = MODEL | {"batch_size": min(n, 256), "steps": steps} | first_last(steps)
    variants = [Variant(f"vaeconverge, constants {'on' if on else 'off'}", time_vaeconverge,
                        (data, options | {"constants": on}, 0)) for on in (False, True)]
    off, on = measure_all(variants, settings)
    budget_mib = DIAGNOSTICS_BYTES / 2**20
    extra = on.peak_rss_mib - off.peak_rss_mib
    return Result(NAME, [off, on], [Ratio(f"probes' extra peak memory ({extra:.0f} MiB) over the budget "
                                          f"({budget_mib:.0f} MiB)", extra / budget_mib, target="<= 1x",
                                          met=extra <= budget_mib)])


if __name__ == "__main__":
    main(run, __doc__)

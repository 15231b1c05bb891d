"""Benchmark 7: ``--precision bf16`` against float32 on the paper's CIFAR-100 conv VAE (``conv32``: latent 100,
soft-clipping, Bernoulli, B = 256, Adam) on random binary 3x32x32 images, on the benchmarks' ``--device`` (auto:
a GPU where torch sees one). Checkpoints at the first and last step only, and the ratio is of the training
steps' time, the checkpoints' seconds (float32 in both) taken out. No target: bf16 pays on GPUs with bfloat16
arithmetic; a CPU without it emulates it.
Run: ``.venv/bin/python benchmarks/precision.py [--quick] [--repeats N]``.
"""

from __future__ import annotations

from harness import (
    Data,
    Ratio,
    Result,
    Settings,
    Variant,
    first_last,
    main,
    measure_all,
    time_vaeconverge,
    training_seconds,
)

NAME = "B7 conv32 bf16 vs float32"
MODEL = {"model": "conv32", "latent_dim": 100, "activation": "softclip", "likelihood": "bernoulli",
         "batch_size": 256, "optimizer": "adam", "lr": 1e-3}


def run(settings: Settings) -> Result:
    n, steps, warmup = (256, 2, 1) if settings.quick else (512, 10, 2)
    data = Data("binary", n=n, dim=3 * 32 * 32, seed=2)
    variants = [Variant(f"vaeconverge, --precision {precision}", time_vaeconverge,
                        (data, MODEL | {"steps": steps, "precision": precision, "device": settings.device}
                         | first_last(steps), warmup))
                for precision in ("float32", "bf16")]
    full, half = measure_all(variants, settings)
    return Result(NAME, [full, half], [Ratio("bf16 training-step speed-up over float32",
                                             training_seconds(full) / training_seconds(half))])


if __name__ == "__main__":
    main(run, __doc__)

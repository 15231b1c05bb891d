"""Benchmark 3: Pythae's default MLP VAE (784 -> 512 -> 16, Bernoulli, B = 256, Adam, lr 1e-3) trained by
Pythae 0.1.2's own trainer (``BaseTrainer``) against vaeconverge on the same shape and the same random binary
data: (N, 1, 28, 28) for Pythae, the same pixels flattened to (N, 784) for vaeconverge. Target: >= 1.3x.

N is a multiple of B, so Pythae's epochs (it keeps the last incomplete batch) and vaeconverge's steps are the
same optimizer steps. Pythae gets no evaluation set and writes its model into a temporary folder.
vaeconverge runs with its default full-gradient diagnostics, constants probes off (``--quick``: 5
checkpoints), and once more with them reduced to the first and last step, for information. Needs the optional extra,
``.venv/bin/pip install -e '.[bench]'``; skipped without it.
Run: ``.venv/bin/python benchmarks/pythae_vs_vaeconverge.py [--quick]`` (or ``run_all.py``).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from typing import Any

import torch
from harness import (
    BASELINE_MLP,
    Data,
    Result,
    Settings,
    Timed,
    Variant,
    against_baseline,
    main,
    time_vaeconverge,
)

NAME = "B3 vs Pythae 0.1.2 (784-512-16)"
SKIP = "pythae not installed (pip install -e '.[bench]')"
BATCH, LATENT, HIDDEN, LR = 256, 16, 512, 1e-3
TARGET = 1.3


def time_pythae(data: Data, epochs: int, warmup_epochs: int) -> Timed:
    """Pythae's ``BaseTrainer`` with ``BaseTrainerConfig`` and its ``VAE``/``VAEConfig`` (default MLP networks)."""
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    x = data.load().view(-1, 1, 28, 28)
    dataset = BaseDataset(x, torch.zeros(len(x)))

    def fit(epochs: int) -> None:
        with tempfile.TemporaryDirectory() as output_dir:
            config = BaseTrainerConfig(output_dir=output_dir, per_device_train_batch_size=BATCH, num_epochs=epochs,
                                       learning_rate=LR, optimizer_cls="Adam")
            model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=LATENT, reconstruction_loss="bce"))
            BaseTrainer(model, dataset, training_config=config).train()

    fit(warmup_epochs)
    start = time.perf_counter()
    fit(epochs)
    return Timed(time.perf_counter() - start, epochs * len(x) // BATCH)


def run(settings: Settings) -> Result:
    if importlib.util.find_spec("pythae") is None:
        return Result(NAME, skipped=SKIP)
    n, epochs = (2 * BATCH, 5) if settings.quick else (10 * BATCH, 100)
    steps = epochs * n // BATCH
    data = Data("binary", n=n, dim=28 * 28, seed=3)

    def ours(label: str, diagnostics: dict[str, Any]) -> Variant:
        options = {"model": "mlp", "hidden": HIDDEN, "depth": 1, "latent_dim": LATENT, "likelihood": "bernoulli",
                   "batch_size": BATCH, "lr": LR, "steps": steps} | BASELINE_MLP | diagnostics
        return Variant(f"vaeconverge, {label}", time_vaeconverge, (data, options, n // BATCH))

    pythae = Variant("Pythae BaseTrainer", time_pythae, (data, epochs, 1))
    return against_baseline(NAME, pythae, ours, "Pythae", steps, settings, TARGET)


if __name__ == "__main__":
    main(run, __doc__)

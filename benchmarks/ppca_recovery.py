"""How close does the Linear VAE get to the closed-form pPCA maximum likelihood?

Run on demand (not a test): ``.venv/bin/python benchmarks/ppca_recovery.py [--steps N]``.
Draws four pPCA data sets of different sizes and scales (fresh seeds, not the test suite's), trains the
Linear VAE with a learned-variance Gaussian decoder under several optimiser settings, and prints the
relative gap of the exact average log-likelihood to the pPCA optimum.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vaeconverge.config import RunConfig
from vaeconverge.data import Dataset
from vaeconverge.engine import train
from vaeconverge.models import ppca_optimum

# (N, D, k, noise c, scale of W)
PROBLEMS = [(2000, 10, 2, 0.3, 1.0), (1000, 30, 5, 1.0, 3.0), (5000, 50, 4, 0.5, 0.2), (4000, 25, 6, 0.2, 1.5)]
SETTINGS = [
    {"optimizer": "adam", "lr": 1e-3},
    {"optimizer": "adam", "lr": 1e-2},
    {"optimizer": "adam", "lr": 1e-2, "batch_size": 512},
    {"optimizer": "adam", "lr": 1e-2, "schedule": "epoch-sqrt"},
    {"optimizer": "adam", "lr": 3e-2, "schedule": "sqrt"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    rng = np.random.default_rng(123)
    data = []
    for n, d, k, c, scale in PROBLEMS:
        w = rng.normal(size=(d, k)) * scale
        b = rng.normal(size=d) * 2
        x = rng.normal(size=(n, k)) @ w.T + b + c * rng.normal(size=(n, d))
        data.append((k, torch.tensor(x, dtype=torch.float32)))
    print(f"{'setting':<42} {'N':>5} {'D':>3} {'k':>2} {'log p(x)':>10} {'pPCA max':>10} {'gap %':>7} {'s':>5}")
    for setting in SETTINGS:
        for k, x in data:
            config = RunConfig(model="linear", likelihood="gaussian", learn_variance=True, latent_dim=k,
                               steps=args.steps, eval_every=args.steps, **setting)
            result = train(config, Dataset("ppca", x), progress=False)
            reached, best = result.summary["log_likelihood"], ppca_optimum(x, k).log_likelihood
            label = ", ".join(f"{key}={value}" for key, value in setting.items())
            print(f"{label:<42} {x.shape[0]:>5} {x.shape[1]:>3} {k:>2} {reached:>10.4f} {best:>10.4f} "
                  f"{100 * abs(reached - best) / abs(best):>7.3f} {result.summary['seconds']:>5.1f}")


if __name__ == "__main__":
    main()

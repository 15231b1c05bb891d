"""Is the checkpointed ||grad L||^2 the quantity the theorems bound? A brute-force reference from a checkpoint.

Run on demand (not a test): ``.venv/bin/python benchmarks/grad_norm_reference.py RUN_DIR [--draws 32]``, where
RUN_DIR was written by ``vaeconverge train`` (``summary.json``, ``checkpoint.pt``). Rebuilds the first replica with
``load_model``, takes ``draws`` independent full-data gradients (one Monte Carlo draw per example each, fresh noise),
and prints the mean of <g_i, g_j> over all pairs i != j (unbiased for ||grad L||^2) with a standard error from
disjoint pairs, next to the run's final ``grad_sq_norm`` and its ``grad_sq_norm_se``, and the biased reading.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from vaeconverge.data import as_float, load_dataset
from vaeconverge.engine.checkpoint import load_model
from vaeconverge.objectives import build_objective, draw_noise


def full_gradient(model: torch.nn.Module, objective, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Monte Carlo full-data gradient of -(1/N) sum_n objective(x_n), flattened."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for chunk in x.split(512):
        chunk = as_float(chunk)
        eps = draw_noise(objective.samples, len(chunk), model.latent_dim, generator, chunk.dtype)
        loss = -objective(model, chunk, eps).sum() / len(x)
        for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc += g
    return torch.cat([g.reshape(-1) for g in total]).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--draws", type=int, default=32)
    args = parser.parse_args()
    summary = json.loads((args.run / "summary.json").read_text())
    model, config = load_model(args.run / "checkpoint.pt")
    x = load_dataset(config).x
    objective = build_objective(config)
    generator = torch.Generator().manual_seed(12345)
    grads = torch.stack([full_gradient(model, objective, x, generator) for _ in range(args.draws)])
    gram = grads @ grads.T
    n = args.draws
    reference = ((gram.sum() - gram.diagonal().sum()) / (n * (n - 1))).item()
    pairs = torch.stack([gram[2 * k, 2 * k + 1] for k in range(n // 2)])
    reference_se = (pairs.std() / math.sqrt(len(pairs))).item()
    first = summary["per_seed"][0] if summary.get("per_seed") else summary
    measured, se = first["grad_sq_norm"], first["grad_sq_norm_se"] or 0.0
    print(f"reference mean <g_i, g_j> over {n} draws: {reference:.4g} +- {reference_se:.2g}")
    print(f"one pair <g_a, g_b>: SD {pairs.std().item():.3g} ({pairs.std().item() / abs(reference):.0%} of the "
          f"reference); one draw ||g||^2: mean {gram.diagonal().mean().item():.4g} (biased)")
    print(f"run's final grad_sq_norm (seed {first.get('seed', 0)}): {measured:.4g} +- {se:.2g}; "
          f"grad_sq_norm_biased {first['grad_sq_norm_biased']:.4g}")
    combined = math.hypot(se, reference_se)
    print(f"ratio {measured / reference:.3f}; difference {measured - reference:.3g} = "
          f"{(measured - reference) / combined:.2f} combined standard errors")


if __name__ == "__main__":
    main()

"""The stepping loop shared by every kind of run (VAE ensembles, BBVI): draw a batch's losses, step, track
minibatch gradient norms, and hand checkpoints to the caller's evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import torch
from tqdm.auto import tqdm

from ..data import PermutationBatches
from ..diagnostics import GradientNormTracker

METRIC_COLUMNS = (
    "seed",
    "step",
    "epoch",
    "lr",
    "objective",
    "grad_sq_norm",
    "batch_grad_sq_norm",
    "paper_proxy",
    "log_likelihood",
    "random_iterate",
    "bound",
    "seconds",
)


class TrainingDiverged(RuntimeError):
    """The full objective of a replica became NaN or infinite."""

    def __init__(self, step: int, seed: int) -> None:
        super().__init__(f"training diverged: the objective of seed {seed} is not finite at step {step}")
        self.step = step
        self.seed = seed


def checkpoint_rows(
    measured: Sequence[dict[str, float]], seeds: Sequence[int], step: int, lr: float, epoch: int,
    tracker: GradientNormTracker, seconds: float,
) -> list[dict[str, float]]:
    """One :data:`METRIC_COLUMNS` row per seed from the checkpoint's full-data measurements (``objective``,
    ``grad_sq_norm``, ``log_likelihood``) and the minibatch norms tracked since the last one; raises
    :class:`TrainingDiverged` for a non-finite objective. The random iterate and the bound are filled in later."""
    rows = []
    for seed, row, window, proxy in zip(seeds, measured, tracker.read_window(), tracker.paper_proxy, strict=True):
        if not math.isfinite(row["objective"]):
            raise TrainingDiverged(step, seed)
        full = row | {"seed": seed, "step": step, "epoch": epoch, "lr": lr, "batch_grad_sq_norm": window,
                      "paper_proxy": proxy, "random_iterate": math.nan, "bound": math.nan, "seconds": seconds}
        rows.append({key: full[key] for key in METRIC_COLUMNS})
    return rows


def run_steps(
    steps: int,
    batch_losses: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    tracker: GradientNormTracker,
    epochs: PermutationBatches,
    squared_norms: Callable[[list[torch.Tensor]], torch.Tensor],
    checkpoints: Collection[int],
    record: Callable[[int, float], dict[str, float]],
    desc: str = "train",
    progress: bool = True,
) -> bool:
    """Steps 1..``steps``: ``batch_losses()`` gives every replica's loss (T,) on its next batch, their *sum* is
    differentiated (each replica's gradient stays its own), ``squared_norms`` returns each replica's squared
    gradient norm (and may clip in place), and ``record(step, lr)`` runs at the ``checkpoints`` (step 0 too).
    Ctrl-C stops early, after recording the last completed step; returns whether it did."""
    last = record(0, optimizer.param_groups[0]["lr"])
    step = 0
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress or None, leave=False)
    try:
        for step in range(1, steps + 1):
            loss = batch_losses()
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            tracker.observe(squared_norms([p.grad for p in params]))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if epochs.epoch_finished:
                tracker.end_epoch()
            if step in checkpoints:
                last = record(step, lr)
                bar.set_postfix(objective=f"{last['objective']:.5g}", grad_sq=f"{last['grad_sq_norm']:.3g}")
            bar.update()
    except KeyboardInterrupt:
        if last["step"] != step - 1 and step > 1:
            record(step - 1, optimizer.param_groups[0]["lr"])
        return True
    finally:
        bar.close()
    return False

"""The stepping loop shared by every kind of run (VAE ensembles, BBVI): draw a batch's losses, step, and report
minibatch gradient norms, epochs and checkpoints to the run's :class:`~.recorder.Recorder`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..data import PermutationBatches
from ..runtime import finishing
from .recorder import Recorder


def run_steps(
    steps: int,
    batch_losses: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    recorder: Recorder,
    epochs: PermutationBatches,
    squared_norms: Callable[[list[torch.Tensor]], torch.Tensor],
    desc: str = "train",
    progress: bool = True,
) -> bool:
    """Steps 1..``steps``: ``batch_losses()`` gives every replica's loss (T,) on its next batch, their *sum* is
    differentiated (each replica's gradient stays its own), ``squared_norms`` returns each replica's squared
    gradient norm (and may clip in place), and the recorder records its checkpoints (step 0 too).
    Ctrl-C (or SIGTERM, under ``runtime.graceful_stop``) stops early, after recording the last completed step;
    returns whether it did. Once the loop has ended, further signals are held until the run is written."""

    def record(step: int, lr: float) -> dict[str, float]:
        return recorder.record(step, lr, max(epochs.epoch, 0))[-1]

    last = record(0, optimizer.param_groups[0]["lr"])
    step = 0
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress or None, leave=False)
    try:
        for step in range(1, steps + 1):
            loss = batch_losses()
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            recorder.observe(squared_norms([p.grad for p in params]))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if epochs.epoch_finished:
                recorder.end_epoch()
            if step in recorder.checkpoints:
                last = record(step, lr)
                bar.set_postfix(objective=f"{last['objective']:.5g}", grad_sq=f"{last['grad_sq_norm']:.3g}")
            bar.update()
    except KeyboardInterrupt:
        if last["step"] != step - 1 and step > 1:
            record(step - 1, optimizer.param_groups[0]["lr"])
        return True
    finally:
        finishing()
        bar.close()
    return False

"""Optimizers from torch.optim and the step-size schedules the theory uses (gamma_n = lr * n^-alpha)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor],
    lr: float,
    momentum: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """The stock torch.optim implementation of ``name`` (one of ``config.OPTIMIZERS``).

    Where torch has a fused kernel (SGD, Adam, AdamW, Adagrad) it is used: one pass over memory instead of one
    per operation (see the README's performance section). Its vectorised body and scalar tail round
    differently, which is why the ensemble aligns each replica's parameters (``ROW_ALIGNMENT``).
    """
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, fused=True)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=lr, betas=betas, amsgrad=name == "amsgrad", fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, fused=True)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr, betas=betas)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, betas=betas)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, betas=betas)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, fused=True)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def schedule_factor(name: str, power: float, batches_per_epoch: int):
    """Multiplier of the base lr after ``n`` completed steps, so that step n + 1 uses lr * factor(n).

    constant: 1.  sqrt: (n + 1)^-power, i.e. gamma_n = lr * n^-power for iterations n = 1, 2, ...
    epoch-sqrt: (epoch + 1)^-power, fixed within an epoch, as in the paper's experiments.
    """
    if name == "constant":
        return lambda n: 1.0
    if name == "sqrt":
        return lambda n: (n + 1) ** -power
    if name == "epoch-sqrt":
        return lambda n: (n // batches_per_epoch + 1) ** -power
    raise ValueError(f"unknown schedule {name!r}")


def build_schedule(
    optimizer: torch.optim.Optimizer, name: str, power: float = 0.5, batches_per_epoch: int = 1
) -> LambdaLR:
    """A LambdaLR stepped once per iteration that realises the named schedule."""
    return LambdaLR(optimizer, schedule_factor(name, power, batches_per_epoch))

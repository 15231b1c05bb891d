"""Optimizers from torch.optim, registered by name with what the theory knows of them, and the step-size
schedules the theory uses (gamma_n = lr * n^-alpha)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from .registry import Registry


@dataclass(frozen=True)
class OptimizerSpec:
    """One ``--optimizer`` choice: how to build it from (params, lr, momentum, betas), the recursion a convergence
    theorem covers (``bound``; None: none), and why its update couples entries of a tensor (``couples``; None: it
    is elementwise, so replicas stacked in one tensor stay independent). ``recognises`` tells whether a user's
    optimizer is this entry; None: any instance of ``torch_class``."""

    name: str
    torch_class: type[torch.optim.Optimizer]
    build: Callable[[list[Tensor], float, float, tuple[float, float]], torch.optim.Optimizer]
    bound: str | None = None
    couples: str | None = None
    recognises: Callable[[torch.optim.Optimizer], bool] | None = None

    def __post_init__(self) -> None:
        if self.recognises is None:
            cls = self.torch_class
            object.__setattr__(self, "recognises", lambda optimizer: isinstance(optimizer, cls))


def _is_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Plain Adam: the Adam class without AMSGrad, and not AdamW (which subclasses it)."""
    return (isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW)
            and not optimizer.param_groups[0].get("amsgrad"))


def _is_amsgrad(optimizer: torch.optim.Optimizer) -> bool:
    """Adam with AMSGrad's running maximum of the second moment."""
    return (isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW)
            and bool(optimizer.param_groups[0].get("amsgrad")))


# Where torch has a fused kernel (SGD, Adam, AdamW, Adagrad) it is used: one pass over memory instead of one per
# operation (see the README's performance section). Its vectorised body and scalar tail round differently, which is
# why the ensemble aligns each replica's parameters (``ROW_ALIGNMENT``).
OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer", ((spec.name, spec) for spec in (
    OptimizerSpec("sgd", torch.optim.SGD,
                  lambda p, lr, momentum, betas: torch.optim.SGD(p, lr=lr, momentum=momentum, fused=True),
                  bound="sgd"),
    OptimizerSpec("adam", torch.optim.Adam,
                  lambda p, lr, momentum, betas: torch.optim.Adam(p, lr=lr, betas=betas, fused=True),
                  bound="adam", recognises=_is_adam),
    OptimizerSpec("amsgrad", torch.optim.Adam,
                  lambda p, lr, momentum, betas: torch.optim.Adam(p, lr=lr, betas=betas, amsgrad=True, fused=True),
                  bound="adam", recognises=_is_amsgrad),
    OptimizerSpec("adamw", torch.optim.AdamW,
                  lambda p, lr, momentum, betas: torch.optim.AdamW(p, lr=lr, betas=betas, fused=True)),
    OptimizerSpec("nadam", torch.optim.NAdam, lambda p, lr, momentum, betas: torch.optim.NAdam(p, lr=lr, betas=betas)),
    OptimizerSpec("radam", torch.optim.RAdam, lambda p, lr, momentum, betas: torch.optim.RAdam(p, lr=lr, betas=betas)),
    OptimizerSpec("adamax", torch.optim.Adamax,
                  lambda p, lr, momentum, betas: torch.optim.Adamax(p, lr=lr, betas=betas)),
    OptimizerSpec("rmsprop", torch.optim.RMSprop,
                  lambda p, lr, momentum, betas: torch.optim.RMSprop(p, lr=lr, momentum=momentum),
                  bound="rmsprop"),
    OptimizerSpec("adagrad", torch.optim.Adagrad,
                  lambda p, lr, momentum, betas: torch.optim.Adagrad(p, lr=lr, fused=True), bound="adagrad"),
    OptimizerSpec("adafactor", torch.optim.Adafactor,
                  lambda p, lr, momentum, betas: torch.optim.Adafactor(p, lr=lr),
                  couples="its factored second moment averages over a tensor's rows and columns"),
)))


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` as a new ``--optimizer`` choice, for configurations, sweeps, the CLI and the monitor alike."""
    return OPTIMIZERS.register(spec.name, spec)


def optimizer_spec(name: str) -> OptimizerSpec:
    """The registered entry called ``name``; a ValueError listing the known names otherwise."""
    return OPTIMIZERS.lookup(name)


def bound_family(name: str) -> str | None:
    """The recursion a convergence theorem covers for the optimizer called ``name`` (None: none, or unregistered,
    as a user's own optimizer the monitor does not recognise)."""
    spec = OPTIMIZERS.get(name)
    return None if spec is None else spec.bound


def recognise_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """The registered name of a user's optimizer (the latest registered entry that recognises it, so that a
    registration can refine an earlier one), else its lowercased class name (for which no bound is implemented)."""
    for spec in reversed(OPTIMIZERS.values()):
        if spec.recognises(optimizer):
            return spec.name
    return type(optimizer).__name__.lower()


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor],
    lr: float,
    momentum: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """The registered optimizer called ``name`` over ``params`` (the built-ins: the stock torch.optim ones)."""
    return optimizer_spec(name).build(list(params), lr, momentum, betas)


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

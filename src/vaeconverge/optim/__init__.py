"""Optimizers, registered by name with what the theory knows of them, and the step-size schedules the theory uses
(gamma_n = lr * n^-alpha).

The built-ins are torch.optim's, plus :class:`AdamDefossez` and :class:`AdagradDefossez` (``defossez``): the
recursions the Adam and Adagrad bounds of :mod:`vaeconverge.theory.bounds` cover, which torch's Adam and Adagrad
are not. Each entry either names the bound that covers it (``bound``) or says why none does (``uncovered``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from ..registry import Registry
from .defossez import DEFAULT_EPS, AdagradDefossez, AdamDefossez

__all__ = [
    "DEFAULT_EPS",
    "OPTIMIZERS",
    "AdagradDefossez",
    "AdamDefossez",
    "OptimizerSpec",
    "bound_family",
    "build_optimizer",
    "build_schedule",
    "optimizer_spec",
    "recognise_optimizer",
    "register_optimizer",
    "schedule_factor",
    "uncovered_reason",
]


@dataclass(frozen=True)
class OptimizerSpec:
    """One ``--optimizer`` choice: how to build it from (params, lr, momentum, betas), the recursion a convergence
    theorem covers (``bound``; None: none, and ``uncovered`` says why, in one sentence a user reads), and why its
    update couples entries of a tensor (``couples``; None: it is elementwise, so replicas stacked in one tensor stay
    independent). ``recognises`` tells whether a user's optimizer is this entry; None: any instance of
    ``torch_class``."""

    name: str
    torch_class: type[torch.optim.Optimizer]
    build: Callable[[list[Tensor], float, float, tuple[float, float]], torch.optim.Optimizer]
    bound: str | None = None
    couples: str | None = None
    recognises: Callable[[torch.optim.Optimizer], bool] | None = None
    uncovered: str | None = None

    def __post_init__(self) -> None:
        if self.bound is not None and self.uncovered is not None:
            raise ValueError(f"optimizer {self.name!r}: a bound ({self.bound!r}) covers it, so it has no "
                             f"'uncovered' reason")
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


def _no_bound(name: str) -> str:
    return f"no convergence bound is implemented for {name}"


# Where torch has a fused kernel (SGD, Adam, AdamW, Adagrad) it is used: one pass over memory instead of one per
# operation (see the README's performance section). Its vectorised body and scalar tail round differently, which is
# why the ensemble aligns each replica's parameters (``ROW_ALIGNMENT``).
OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer", ((spec.name, spec) for spec in (
    OptimizerSpec("sgd", torch.optim.SGD,
                  lambda p, lr, momentum, betas: torch.optim.SGD(p, lr=lr, momentum=momentum, fused=True),
                  bound="sgd"),
    OptimizerSpec("adam", torch.optim.Adam,
                  lambda p, lr, momentum, betas: torch.optim.Adam(p, lr=lr, betas=betas, fused=True),
                  recognises=_is_adam,
                  uncovered="torch.optim.Adam's step is 1/(1 - beta1^n) times the step of the recursion the Adam "
                            "bound covers (10x at n = 1 with beta1 = 0.9), and its eps sits outside the square root; "
                            "use --optimizer adam-defossez for the analysed recursion"),
    OptimizerSpec("adam-defossez", AdamDefossez,
                  lambda p, lr, momentum, betas: AdamDefossez(p, lr=lr, betas=betas), bound="adam"),
    OptimizerSpec("amsgrad", torch.optim.Adam,
                  lambda p, lr, momentum, betas: torch.optim.Adam(p, lr=lr, betas=betas, amsgrad=True, fused=True),
                  recognises=_is_amsgrad,
                  uncovered="AMSGrad keeps the running maximum of the second moment, another recursion than the "
                            "Adam one the bound covers"),
    OptimizerSpec("adamw", torch.optim.AdamW,
                  lambda p, lr, momentum, betas: torch.optim.AdamW(p, lr=lr, betas=betas, fused=True),
                  uncovered=_no_bound("AdamW (decoupled weight decay)")),
    OptimizerSpec("nadam", torch.optim.NAdam, lambda p, lr, momentum, betas: torch.optim.NAdam(p, lr=lr, betas=betas),
                  uncovered=_no_bound("NAdam (Nesterov momentum)")),
    OptimizerSpec("radam", torch.optim.RAdam, lambda p, lr, momentum, betas: torch.optim.RAdam(p, lr=lr, betas=betas),
                  uncovered=_no_bound("RAdam (rectified adaptive step)")),
    OptimizerSpec("adamax", torch.optim.Adamax,
                  lambda p, lr, momentum, betas: torch.optim.Adamax(p, lr=lr, betas=betas),
                  uncovered=_no_bound("Adamax (infinity-norm second moment)")),
    OptimizerSpec("rmsprop", torch.optim.RMSprop,
                  lambda p, lr, momentum, betas: torch.optim.RMSprop(p, lr=lr, momentum=momentum),
                  uncovered="RMSprop has no bias correction: its step is 1/sqrt(1 - alpha^n) times the analysed Adam "
                            "step with beta1 = 0 (10x at n = 1, 3.2x at n = 10 with alpha = 0.99)"),
    OptimizerSpec("adagrad", AdagradDefossez,
                  lambda p, lr, momentum, betas: AdagradDefossez(p, lr=lr), bound="adagrad"),
    OptimizerSpec("torch-adagrad", torch.optim.Adagrad,
                  lambda p, lr, momentum, betas: torch.optim.Adagrad(p, lr=lr, fused=True),
                  uncovered="torch.optim.Adagrad adds its eps outside the square root (and has an lr decay and an "
                            "initial accumulator), another recursion than the analysed one; use --optimizer adagrad "
                            "for the analysed recursion"),
    OptimizerSpec("adafactor", torch.optim.Adafactor,
                  lambda p, lr, momentum, betas: torch.optim.Adafactor(p, lr=lr),
                  couples="its factored second moment averages over a tensor's rows and columns",
                  uncovered=_no_bound("Adafactor (factored second moment)")),
)))


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` as a new ``--optimizer`` choice, for configurations, sweeps, the CLI and the monitor alike."""
    return OPTIMIZERS.register(spec.name, spec)


def optimizer_spec(name: str) -> OptimizerSpec:
    """The registered entry called ``name``; a ValueError listing the known names otherwise."""
    return OPTIMIZERS.lookup(name)


def bound_family(name: str) -> str | None:
    """The recursion a convergence theorem covers for the optimizer called ``name`` (None: none, or unregistered,
    as a user's own optimizer the monitor does not recognise; :func:`uncovered_reason` says why)."""
    spec = OPTIMIZERS.get(name)
    return None if spec is None else spec.bound


def uncovered_reason(name: str) -> str | None:
    """Why no bound of this package covers the optimizer called ``name``, in one sentence (None: one does).

    An unregistered name (as :func:`recognise_optimizer` gives a class it does not know) or an entry registered
    without a bound or a reason reads "no convergence bound is implemented for <name>"."""
    spec = OPTIMIZERS.get(name)
    if spec is None:
        return _no_bound(name)
    if spec.bound is not None:
        return None
    return spec.uncovered or _no_bound(name)


def recognise_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """The registered name of a user's optimizer (the latest registered entry that recognises it, so that a
    registration can refine an earlier one), else ``module.qualname`` of its class, e.g. ``torch.optim.lbfgs.LBFGS``
    (which names no entry, so no bound is implemented for it)."""
    for spec in reversed(OPTIMIZERS.values()):
        if spec.recognises(optimizer):
            return spec.name
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__qualname__}"


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor],
    lr: float,
    momentum: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """The registered optimizer called ``name`` over ``params`` (the built-ins: torch.optim's, and the analysed
    recursions ``adam-defossez`` and ``adagrad``)."""
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

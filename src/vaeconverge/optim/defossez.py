"""Adam and Adagrad exactly as Défossez, Bottou, Bach and Usunier analyse them (*A Simple Convergence Proof of Adam
and Adagrad*, TMLR 2022), so that the bounds of :mod:`vaeconverge.theory.bounds` (``adam_bound``, Theorem 2, and
``adagrad_bound``, Theorem 1) cover the very recursion a run steps, with no mapping between parameterisations.

:class:`AdamDefossez` (lr = alpha, betas = (b1, b2), eps = epsilon; m_0 = v_0 = 0; n = 1, 2, ...)::

    m_n = b1 m_{n-1} + g_n                                   (no (1 - b1) factor)
    v_n = b2 v_{n-1} + g_n^2                                 (no (1 - b2) factor)
    alpha_n = lr (1 - b1) sqrt((1 - b2^n) / (1 - b2))
    x_n = x_{n-1} - alpha_n m_n / sqrt(eps + v_n)            (eps inside the square root)

:class:`AdagradDefossez` (lr = alpha, eps = epsilon; v_0 = 0)::

    v_n = v_{n-1} + g_n^2
    x_n = x_{n-1} - lr g_n / sqrt(eps + v_n)

torch.optim.Adam differs: its step is 1 / (1 - b1^n) times this one (ten times at n = 1 with b1 = 0.9) and its eps
sits outside the square root; torch.optim.Adagrad also puts eps outside the root. Neither is what the theorems cover.

Both are elementwise (every entry of a tensor is its own recursion), so replicas stacked along a leading dimension
of one tensor are independent optimizers. ``lr`` (and the betas, eps) are read from the parameter group at every
step, so torch's lr schedulers drive them as they drive the stock optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

DEFAULT_EPS = 1e-8
"""The epsilon (inside the square root) of :class:`AdamDefossez` and :class:`AdagradDefossez` by default."""

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


def _positive_float(name: str, value: float, why: str = "") -> float:
    try:
        valid = not isinstance(value, (bool, Tensor)) and math.isfinite(value) and value > 0
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"{name} must be a finite float > 0{why}, got {value!r}")
    return float(value)


def _check_lr(lr: float) -> float:
    return _positive_float("lr", lr)


def _check_eps(eps: float) -> float:
    return _positive_float("eps", eps, " (it sits inside the square root)")


def _check_betas(betas: tuple[float, float]) -> tuple[float, float]:
    try:
        beta1, beta2 = (float(b) for b in betas)
    except (TypeError, ValueError) as error:
        raise ValueError(f"betas must be a pair of floats (beta1, beta2), got {betas!r}") from error
    if not 0.0 <= beta1 < beta2 < 1.0:
        raise ValueError(f"betas must satisfy 0 <= beta1 < beta2 < 1 (as the Adam bound requires), got {betas!r}")
    return beta1, beta2


_GROUP_CHECKS: dict[str, Callable[[Any], Any]] = {"lr": _check_lr, "betas": _check_betas, "eps": _check_eps}


class _ElementwiseOptimizer(Optimizer):
    """The loop every optimizer of this module shares: under no_grad, for each parameter with a gradient, create
    its state on first use (``step`` = 0 plus :meth:`_init_state`), count the step, then :meth:`_update` it.
    Every parameter group's ``lr``, ``betas`` and ``eps`` (those it has) are checked as it is added."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):  # checked before it joins: a refused group leaves the optimizer as it was
            given = {**self.defaults, **param_group}
            param_group = {**param_group, **{key: check(given[key]) for key, check in _GROUP_CHECKS.items()
                                             if key in given}}
        super().add_param_group(param_group)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state of ``param`` before its first step, besides ``step``."""
        raise NotImplementedError

    def _update(self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Step ``param`` in place with gradient ``grad``; ``state["step"]`` is already n (1 on the first step)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of the recursion for every parameter that has a gradient (the others, and their state, stay
        untouched). ``closure`` re-evaluates the loss (with gradients enabled) and its value is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if torch.is_complex(param):
                    raise RuntimeError(f"{type(self).__name__} steps real parameters only")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state.update(self._init_state(param, group))
                state["step"] += 1
                self._update(param, grad, state, group)
        return loss


class AdamDefossez(_ElementwiseOptimizer):
    """Adam as Défossez et al. analyse it (module docstring): moments without (1 - beta) factors, the step
    alpha_n = lr (1 - b1) sqrt((1 - b2^n) / (1 - b2)) and ``eps`` inside the square root. ``adam_bound`` covers it
    with alpha = lr and epsilon = eps."""

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = DEFAULT_EPS) -> None:
        super().__init__(params, {"lr": _check_lr(lr), "betas": _check_betas(betas), "eps": _check_eps(eps)})

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        n = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(grad)
        v.mul_(beta2).addcmul_(grad, grad)
        alpha = group["lr"] * (1.0 - beta1) * math.sqrt((1.0 - beta2**n) / (1.0 - beta2))
        param.addcdiv_(m, (v + group["eps"]).sqrt_(), value=-alpha)


class AdagradDefossez(_ElementwiseOptimizer):
    """Adagrad as Défossez et al. analyse it (module docstring): x -= lr g / sqrt(eps + sum of g^2), ``eps`` inside
    the square root and no lr decay or initial accumulator. ``adagrad_bound`` covers it with alpha = lr, epsilon =
    eps."""

    def __init__(self, params: Params, lr: float = 1e-2, eps: float = DEFAULT_EPS) -> None:
        super().__init__(params, {"lr": _check_lr(lr), "eps": _check_eps(eps)})

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {"sum": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        v = state["sum"]
        v.addcmul_(grad, grad)
        param.addcdiv_(grad, (v + group["eps"]).sqrt_(), value=-group["lr"])

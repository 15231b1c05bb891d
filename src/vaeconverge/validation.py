"""The error every invalid option raises and the checks that raise it: a bottom module, importing nothing of the
project, so that the builders and registries that configurations consult can raise it too."""

from __future__ import annotations

import math
from collections.abc import Iterable


class ConfigError(ValueError):
    """An invalid option; ``option`` is the user-facing name (a CLI flag) of what is wrong."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem


def check_optimizer_options(momentum: float, adam_betas: tuple[float, float]) -> None:
    """Momentum and both Adam betas must lie in [0, 1)."""
    if not 0.0 <= momentum < 1.0:
        raise ConfigError("--momentum", f"must lie in [0, 1) (got {momentum})")
    if not all(0.0 <= b < 1.0 for b in adam_betas):
        raise ConfigError("--adam-betas", f"both must lie in [0, 1) (got {adam_betas})")


def check_choice(option: str, value: str, choices: Iterable[str]) -> None:
    """``value`` must be one of ``choices`` (names, or a registry keyed by them)."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(option, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def check_positive(option: str, value: float) -> None:
    """``value`` must be a finite number above zero."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(option, f"must be positive (got {value})")


def check_nonnegative(option: str, value: float) -> None:
    """``value`` must be a finite number at or above zero."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(option, f"must be non-negative (got {value})")

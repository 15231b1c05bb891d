"""The error every invalid option raises and the checks that raise it: a bottom module, importing nothing of the
project, so that the builders and registries that configurations consult can raise it too."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

# The largest seed torch's generators take (a signed 64-bit integer).
MAX_SEED = 2**63 - 1
# More intra-op threads than this is a typo: OpenMP would try to allocate a stack for each.
MAX_THREADS = 1024
# The fewest gradient draws a gradient-SNR reading takes: its delete-one jackknife needs three (diagnostics/snr.py).
MIN_SNR_DRAWS = 3


class ConfigError(ValueError):
    """An invalid option; ``option`` is the user-facing name (a CLI flag) of what is wrong."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem


def check_optimizer_options(momentum: float, adam_betas: tuple[float, float]) -> None:
    """Momentum and both Adam betas must lie in [0, 1)."""
    _check_number("--momentum", momentum)
    if not 0.0 <= momentum < 1.0:
        raise ConfigError("--momentum", f"must lie in [0, 1) (got {momentum})")
    for beta in adam_betas:
        _check_number("--adam-betas", beta)
    if not all(0.0 <= b < 1.0 for b in adam_betas):
        raise ConfigError("--adam-betas", f"both must lie in [0, 1) (got {adam_betas})")


def check_choice(option: str, value: str, choices: Iterable[str]) -> None:
    """``value`` must be one of ``choices`` (names, or a registry keyed by them)."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(option, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def _check_number(option: str, value: Any) -> None:
    """``value`` must be a finite number (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(option, f"must be a number (got {value!r})")
    if not math.isfinite(value):
        raise ConfigError(option, f"must be a finite number (got {value})")


def check_positive(option: str, value: float) -> None:
    """``value`` must be a finite number above zero."""
    _check_number(option, value)
    if not value > 0:
        raise ConfigError(option, f"must be positive (got {value})")


def check_nonnegative(option: str, value: float) -> None:
    """``value`` must be a finite number at or above zero."""
    _check_number(option, value)
    if not value >= 0:
        raise ConfigError(option, f"must be non-negative (got {value})")


def check_fraction(option: str, value: Any) -> None:
    """``value`` must be a finite number in [0, 1)."""
    _check_number(option, value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(option, f"must lie in [0, 1) (got {value})")


def check_snr_draws(option: str, value: Any) -> None:
    """The number of gradient draws of an SNR reading: an integer of at least :data:`MIN_SNR_DRAWS`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SNR_DRAWS:
        raise ConfigError(option, f"must be an integer of at least {MIN_SNR_DRAWS} (got {value!r})")


def check_seed(option: str, value: Any) -> None:
    """A seed is an integer in [0, 2^63 - 1], the range torch's generators take."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(option, f"seeds are integers from 0 to 2^63 - 1 (got {value!r})")


def check_threads(value: int | None) -> None:
    """``--threads``: None (chosen by the engine) or a positive count no larger than :data:`MAX_THREADS`."""
    if value is None:
        return
    check_positive("--threads", value)
    if value > MAX_THREADS:
        raise ConfigError("--threads", f"at most {MAX_THREADS} (got {value}); this machine has "
                                       f"{os.cpu_count()} logical CPUs")


def as_tuple(option: str, value: Any, length: int | None = None, example: str = "") -> tuple[Any, ...]:
    """A list-valued option read from TOML or JSON as a tuple; anything but a list (of ``length`` items, when
    given) names the option."""
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        items = f"a list of {length} values" if length is not None else "a list"
        raise ConfigError(option, f"expected {items}{', like ' + example if example else ''} (got {value!r})")
    return tuple(value)

"""One-line readings of a summary, for the terminal and the examples: the final ||grad L||^2 with its error,
the rate, and the bound in words (applies or not, holds, violated, vacuous)."""

from __future__ import annotations

import math
from typing import Any

from ..theory.assessment import VACUOUS_FACTOR


def rate_text(rate: dict[str, Any]) -> str:
    """One line for a summary's ``rate`` entry: the slope with its interval over seeds, the steps fitted, the
    regime."""
    if rate.get("slope") is None:
        return rate["regime"]
    low, high = (math.nan if v is None else v for v in rate["ci"])
    interval = f"{rate['level']:.0%} interval [{low:.2f}, {high:.2f}]" if math.isfinite(low) else "no interval"
    seeds = f"{rate['seeds']} seed{'' if rate['seeds'] == 1 else 's'}"
    return (f"slope {rate['slope']:.3f} ({interval}, {seeds}) over steps {rate['first_step']}.."
            f"{rate['last_step']}: {rate['regime']}")


def grad_text(summary: dict[str, Any]) -> str:
    """The final ||grad L||^2 of a summary with its standard error, or what it is where it has none."""
    se = summary.get("grad_sq_norm_se")
    error = f" +- {se:.2g}" if se else " (exact)" if se == 0 else ""
    return f"grad_sq_norm {summary['grad_sq_norm']:.4g}{error}"


def bound_text(bound: dict[str, Any] | None) -> str:
    """One line for a summary's ``bound`` entry: not applicable and why, or its value against the measured
    step-weighted mean, whether it holds, and by what factor the constants would have to be wrong to flip that."""
    if not bound:
        return "no constants measured (--no-constants): no bound"
    if bound["status"] != "applicable":
        name = "" if bound["name"] == "none" else f"{bound['name']}: "
        return f"{name}not applicable: {bound['reason']}"
    if bound["holds"] is None:
        return (f"{bound['name']} E||grad L||^2 <= {bound['value']:.4g} vs measured "
                f"{bound['measured_step_weighted_mean']:.4g}: undetermined (the measured mean is not finite)")
    verdict = "holds" if bound["holds"] else "VIOLATED"
    if bound.get("vacuous"):
        verdict += f", but vacuous (over {VACUOUS_FACTOR:g}x every measured value)"
    flip = bound.get("sensitivity")
    margin = ("no factor within 1e6 flips it" if flip is None else
              f"flips if L, sigma2, delta, R are all {flip:.3g}x too {'large' if bound['holds'] else 'small'}")
    return (f"{bound['name']} E||grad L||^2 <= {bound['value']:.4g} vs measured "
            f"{bound['measured_step_weighted_mean']:.4g}: {verdict}; {margin}")

"""One-line readings of a summary for the terminal: the final ||grad L||^2 with its error, and the rate."""

from __future__ import annotations

import math
from typing import Any


def rate_text(rate: dict[str, Any]) -> str:
    """One line for a summary's ``rate`` entry: the slope with its interval over seeds, the steps fitted, the
    regime."""
    if rate.get("slope") is None:
        return rate["regime"]
    low, high = (math.nan if v is None else v for v in rate["ci"])
    interval = f"{rate['level']:.0%} interval [{low:.2f}, {high:.2f}]" if math.isfinite(low) else "no interval"
    return (f"slope {rate['slope']:.3f} ({interval}, {rate['seeds']} seeds) over steps {rate['first_step']}.."
            f"{rate['last_step']}: {rate['regime']}")


def grad_text(summary: dict[str, Any]) -> str:
    """The final ||grad L||^2 of a summary with its standard error, or what it is where it has none."""
    se = summary.get("grad_sq_norm_se")
    error = f" +- {se:.2g}" if se else " (exact)" if se == 0 else ""
    return f"grad_sq_norm {summary['grad_sq_norm']:.4g}{error}"

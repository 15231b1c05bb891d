"""A run's scalars as TensorBoard events (``vaeconverge train --tensorboard DIR``), when tensorboard is
installed (``pip install 'vaeconverge[tensorboard]'``): every checkpoint's numbers per seed, and their mean."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError
from ..diagnostics.seeds import seed_mean

SCALARS = ("objective", "grad_sq_norm", "batch_grad_sq_norm", "paper_proxy", "log_likelihood", "random_iterate",
           "bound", "lr")
INSTALL = "pip install 'vaeconverge[tensorboard]'"


def require_tensorboard() -> None:
    """Raise :class:`ConfigError` naming ``--tensorboard`` unless the tensorboard package can be imported."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard", f"needs the tensorboard package, which is not installed ({INSTALL})")


def write_scalars(log_dir: str | Path, metrics: Sequence[dict[str, float]]) -> Path:
    """Write ``{key}/seed{t}`` and ``{key}/mean`` for every finite scalar of :data:`SCALARS` at its step."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    rows = [(f"seed{int(row['seed'])}", row) for row in metrics]
    rows += [("mean", row) for row in seed_mean(metrics)]
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name, row in rows:
            for key in SCALARS:
                if math.isfinite(row.get(key, math.nan)):
                    writer.add_scalar(f"{key}/{name}", row[key], int(row["step"]))
    return Path(log_dir)

"""scikit-learn's 8x8 handwritten digits (1797 images, shipped with the package), scaled to [0, 1]."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits


def load_digits_tensor() -> torch.Tensor:
    """Return the digits as an (1797, 64) float32 tensor with grey levels divided by 16."""
    images = load_digits().data
    return torch.as_tensor(images / 16.0, dtype=torch.float32)

"""Minibatches of an in-memory tensor, drawn by a fresh random permutation each epoch."""

from __future__ import annotations

from typing import Any

import torch

from .storage import as_float


class PermutationBatches:
    """Yields batches of ``batch_size`` rows; an epoch is ``len(x) // batch_size`` batches.

    The incomplete tail of each permutation is dropped so that every step sees exactly B examples,
    as the theory's sigma^2 / B noise model assumes.
    """

    def __init__(self, x: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        if not 0 < batch_size <= len(x):
            raise ValueError(f"batch size {batch_size} must lie in [1, {len(x)}]")
        self.x = x
        self.batch_size = batch_size
        self.generator = generator
        self.batches_per_epoch = len(x) // batch_size
        self.epoch = -1
        self._order = torch.empty(0, dtype=torch.long)
        self._position = self.batches_per_epoch

    def next(self) -> torch.Tensor:
        """The next batch, as floats; starts a new epoch (and a new permutation) when the current one is spent."""
        return as_float(self.x[self.next_indices()])

    def next_indices(self) -> torch.Tensor:
        """The rows of the next batch (so that several streams' batches can be gathered at once)."""
        if self._position == self.batches_per_epoch:
            self.epoch += 1
            self._position = 0
            self._order = torch.randperm(len(self.x), generator=self.generator)
        start = self._position * self.batch_size
        self._position += 1
        return self._order[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands (the epoch's permutation, the position in it, the epoch), to resume it; the
        generator's state is its owner's to save."""
        return {"order": self._order, "position": self._position, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from a :meth:`state_dict`."""
        self._order, self._position, self.epoch = state["order"].cpu(), state["position"], state["epoch"]

    @property
    def epoch_finished(self) -> bool:
        """True right after the last batch of an epoch was drawn."""
        return self._position == self.batches_per_epoch

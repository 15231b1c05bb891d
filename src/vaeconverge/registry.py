"""Named entries of one kind (optimizers, objectives, models, activations): the one shape every registry of the
package has, so that a choice is added in one place and every command, sweep and check sees it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A dict of name -> entry that refuses a second entry of one name, and whose :meth:`lookup` names the
    choices when a name is unknown."""

    def __init__(self, kind: str, entries: Iterable[tuple[str, T]] = ()) -> None:
        super().__init__(entries)
        self.kind = kind

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a ValueError if the name is taken."""
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        """The entry called ``name``; a ValueError listing the known names otherwise."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self)}")
        return self[name]

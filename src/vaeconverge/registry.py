"""Named entries of one kind (optimizers, objectives, models, activations): the one shape every registry of the
package has, so that a choice is added in one place and every command, sweep and check sees it. And
:func:`lazy_exports`: a module's names imported from where they live on first use, so that importing the module
(the package, to read a configuration's defaults) costs no torch."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

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


class _LazyModule(types.ModuleType):
    """A module whose :attr:`exports` are imported on first use and then kept. Python sets a submodule, once
    imported, as an attribute of its package; an export of the submodule's name (``vaeconverge.bbvi.train``, the
    function of the module ``bbvi/train.py``) stays the export."""

    exports: ClassVar[Mapping[str, str]] = {}  # name -> the module defining it, relative to this module's package

    def __getattr__(self, name: str) -> Any:
        home = self.exports.get(name)
        if home is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, self.__package__), name)
        vars(self)[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name in self.exports and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*vars(self), *self.exports})


def lazy_exports(module: str, exports: Mapping[str, str]) -> None:
    """Let the module called ``module`` import its ``exports`` (name -> the module defining it, relative to
    ``module``'s package, e.g. ``".api"``) when one is first used, rather than when it is imported."""
    namespace = sys.modules[module]
    namespace.__class__ = type("LazyModule", (_LazyModule,), {"exports": types.MappingProxyType(dict(exports))})

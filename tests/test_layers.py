"""The package's layers depend downward only: every import of every module (at its top or inside a function)
is checked against the rules of the README's "Where things live"."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vaeconverge

PACKAGE = Path(vaeconverge.__file__).parent

# package -> the packages it must never import (a package is a folder or a module of vaeconverge)
FORBIDDEN = {
    "theory": ("engine", "sweeps", "report", "cli", "monitor", "bbvi"),
    "engine": ("sweeps", "report", "cli", "monitor", "bbvi"),
    "diagnostics": ("engine", "theory", "sweeps", "report", "cli", "monitor", "bbvi"),
    "data": ("engine", "theory", "sweeps", "report", "cli", "monitor", "bbvi"),
    "runtime": ("engine", "data", "theory", "diagnostics", "sweeps", "report", "cli", "monitor", "bbvi"),
    "registry": ("validation", "config", "optim", "objectives", "models", "nn", "engine", "data", "theory",
                 "diagnostics", "sweeps", "report", "cli", "monitor", "bbvi", "runtime"),
    "validation": ("config", "optim", "objectives", "models", "nn", "engine", "data", "theory", "diagnostics",
                   "sweeps", "report", "cli", "monitor", "bbvi"),
    "config": ("engine", "diagnostics", "sweeps", "report", "cli", "monitor", "bbvi"),
    "bbvi": ("sweeps", "report", "cli", "monitor"),
    "sweeps": ("cli",),
    "report": ("cli",),
    "monitor": ("cli",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the vaeconverge modules ``path`` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "vaeconverge" or m.startswith("vaeconverge.")}


def layer(module: str) -> str:
    """The top-level package or module of vaeconverge that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_walk_resolves_relative_imports() -> None:
    """The checker itself: engine/train.py's ``from .recorder import ...`` and ``from ..config import ...``."""
    imports = imported_modules(PACKAGE / "engine" / "train.py")
    assert {"vaeconverge.engine.recorder", "vaeconverge.config"} <= imports
    assert layer("vaeconverge.engine.recorder") == "engine"


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_go_downward(path: Path) -> None:
    own = layer(module_name(path))
    forbidden = FORBIDDEN.get(own, ())
    wrong = sorted(m for m in imported_modules(path) if layer(m) in forbidden)
    assert not wrong, f"{module_name(path)} ({own}/) must not import {', '.join(wrong)}"


def test_engine_and_data_share_one_runtime() -> None:
    """Cores, threads and denormals live in runtime.py, used by both engine/ and data/."""
    users = {layer(module_name(p)) for p in MODULES if "vaeconverge.runtime" in imported_modules(p)}
    assert {"engine", "data"} <= users


# The measured-run core's ideas, each implemented once: who may call them besides their own module.
ONE_PLACE = {
    "smoothness_estimate": ("vaeconverge.diagnostics.constants", "vaeconverge.engine.recorder"),
    "noise_from_gradients": ("vaeconverge.diagnostics.constants", "vaeconverge.engine.recorder"),
    "GradientNormTracker": ("vaeconverge.engine.recorder",),
    "assess_run": ("vaeconverge.theory.assessment", "vaeconverge.engine.recorder", "vaeconverge.cli.bound"),
    "torch.save": ("vaeconverge.engine.checkpoint",),  # one checkpoint writer
}


def called_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                names.add(f"{func.value.id}.{func.attr}")  # module.function, as torch.save
    return names


@pytest.mark.parametrize("name", sorted(ONE_PLACE))
def test_the_measured_run_core_is_written_once(name: str) -> None:
    """Train, BBVI and the monitor reach the estimators, the tracker and the assessment through the recorder."""
    callers = {module_name(p) for p in MODULES if name in called_names(p)}
    assert callers <= set(ONE_PLACE[name]), f"{name} called from {sorted(callers - set(ONE_PLACE[name]))}"

"""Sweeps: a grid of run configurations from TOML, run by an executor, stored in SQLite."""

from .executors import Executor, InProcess, ProcessPool, build_executor
from .grid import Finding, SpecError, SweepSpec, load_spec, parse_spec
from .identity import run_id
from .runner import run_sweep
from .store import Outcome, Store, StoredRun, StoreError

__all__ = [
    "Executor",
    "Finding",
    "InProcess",
    "Outcome",
    "ProcessPool",
    "SpecError",
    "Store",
    "StoreError",
    "StoredRun",
    "SweepSpec",
    "build_executor",
    "load_spec",
    "parse_spec",
    "run_id",
    "run_sweep",
]

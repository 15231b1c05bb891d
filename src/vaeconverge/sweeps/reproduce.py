"""``vaeconverge reproduce``: the paper's studies (``vaeconverge/experiments/*.toml``) run as sweeps into one
store, then the report. ``quick`` shortens every run so that the six hyperparameter studies finish in minutes on
two cores (a study with ``quick_by_default = false``, such as the gradient-SNR ones, runs quick only when named);
``studies`` picks studies by name; ``data`` swaps the embedded digits for another data set. ``paper`` runs instead
the studies marked ``paper = true``, the paper's own protocol on CIFAR-100 and CelebA (:mod:`.paper`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from ..config import ConfigError
from .executors import build_executor
from .grid import SweepSpec, parse_spec
from .paper import PAPER_EPOCHS, prepare
from .runner import check_data, run_sweeps
from .store import Store

# What --quick changes in every study: fewer steps, and the 4 seeds below which a rate's regime is undetermined
# (a trend is decided by the seeds, paired); each study's own [quick] table trims its axes and may set options
# of its own, which take precedence.
QUICK = {"steps": 1500, "seeds": [0, 1, 2, 3]}
STORE_NAME = "results.db"


def paper_studies(quick: bool = False, data: str | None = None, device: str | None = None,
                  studies: Sequence[str] = (), data_dir: str | None = None, paper: bool = False,
                  precision: str | None = None) -> list[SweepSpec]:
    """The studies named by ``studies`` (default: every one, less those not quick by default when ``quick``), in
    file-name order, with the ``quick``, ``data``, ``device``, ``data_dir`` and ``precision`` overrides applied to
    their base (the device and the folder change where runs execute and read, not their identity in the store; a
    precision other than float32 does change it); ``paper``: the
    studies marked ``paper = true`` instead of the others. An unknown name, or one of the other kind, is a
    ConfigError."""
    folder = resources.files("vaeconverge") / "experiments"
    every = [parse_spec(entry.read_text(), f"experiments/{entry.name}")
             for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".toml")]
    names = [spec.name for spec in every if spec.paper == paper]
    for name in studies:
        if name not in names:
            other = "is the paper's protocol: run it with --paper" if not paper else "is not a study of --paper"
            known = f"{name!r} {other}" if name in {spec.name for spec in every} else f"no study {name!r}"
            raise ConfigError("--study", f"{known}; the studies are {', '.join(names)}")
    specs = []
    for spec in every:
        if spec.paper != paper or ((spec.name not in studies) if studies else (quick and not spec.quick_by_default)):
            continue
        spec = spec.quickened(QUICK) if quick else spec
        overrides = {key: value for key, value in (("data", data), ("device", device), ("data_dir", data_dir),
                                                   ("precision", precision)) if value}
        specs.append(dataclasses.replace(spec, base={**spec.base, **overrides}))
    return specs


def reproduce(out: Path, quick: bool, data: str | None, jobs: int, progress: bool, device: str | None = None,
              studies: Sequence[str] = (), data_dir: str | None = None, paper: bool = False,
              epochs: int | None = None, yes: bool = False, precision: str | None = None) -> Store:
    """Run the studies (:func:`paper_studies`) into ``out/results.db`` (resuming what it holds) and return the open
    store (closed again if the sweeps stop on an error or an interrupt). ``paper``: the paper's studies, sized
    from their data to ``epochs`` epochs (default :data:`.paper.PAPER_EPOCHS`) and estimated first; on a CPU an
    estimate above the limit stops here, before anything is written, unless ``yes`` (:func:`.paper.prepare`).
    ``precision`` (``--paper`` only): the networks' precision in training (``runtime.network_precision``)."""
    if paper and (quick or data):
        raise ConfigError("--quick" if quick else "--data", "not with --paper, whose studies read their own data "
                                                            "(cifar100, celeba); shorten its runs with --epochs E")
    if not paper and (epochs is not None or yes or precision):
        option = "--epochs" if epochs is not None else "--yes" if yes else "--precision"
        raise ConfigError(option, "applies only with --paper")
    specs = paper_studies(quick, data, device, studies, data_dir, paper, precision)
    if paper:
        specs = prepare(specs, out / STORE_NAME, PAPER_EPOCHS if epochs is None else epochs, device, yes, progress)
    else:
        check_data(specs)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / STORE_NAME)
    try:
        run_sweeps(specs, store, build_executor(jobs), progress=progress)  # one queue: workers stay busy
    except BaseException:
        store.close()
        raise
    return store

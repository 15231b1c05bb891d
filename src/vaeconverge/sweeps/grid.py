"""A sweep as data: a TOML file with a base run configuration, axes (a grid product, and zipped axes that
vary together) and seeds. Every run it expands to is named by a stable identifier of its resolved
configuration (:func:`.identity.run_id`), so the same run is recognised in any later invocation, whatever the
order of the axes, and in any later version of vaeconverge that adds options.

    name = "batch-size"
    seeds = 4                      # replicas per run (a count from seed 0, or a list)
    [base]                         # RunConfig options, as on the command line (dashes or underscores)
    data = "digits"
    steps = 3000
    [grid]                         # the product of these axes
    batch_size = [16, 64, 256]
    [zip]                          # these axes vary together (equal lengths), crossed with the grid
    optimizer = ["sgd", "adam"]
    lr = [0.05, 1e-3]
    [quick]                        # optional: the study's quick version (reproduce --quick): fewer values of
    batch_size = [16, 256]         # some axes (a list), and options of its own (a single value: steps = 300)
    [finding]                      # optional: what the theory or the paper predicts, checked by the report
    statement = "Larger batches end lower: the bound's noise term falls as 1/B."
    metric = "grad_sq_norm"        # a key of summary.json (dots for nested keys)
    expect = "decreasing"          # in the order of the runs: decreasing | increasing | lowest-at | all-true
                                   # | snr-scaling (metric "snr": log SNR against log K and log B, report/snr.py)

A top-level ``quick_by_default = false`` leaves the study out of ``reproduce --quick`` unless ``--study`` names it.
A top-level ``paper = true`` marks a study of the paper's own protocol (its data sets, networks and length in
epochs, :mod:`.paper`): only ``reproduce --paper`` runs it.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bbvi.config import KIND as BBVI_KIND
from ..bbvi.config import BBVIConfig
from ..config import ConfigError, RunConfig
from ..engine.recorder import SUMMARY_KEYS

TOP_LEVEL = ("name", "description", "seeds", "base", "grid", "zip", "quick", "finding", "quick_by_default", "paper")
EXPECTATIONS = ("decreasing", "increasing", "lowest-at", "all-true", "snr-scaling")
FINDING_KEYS = ("statement", "metric", "expect", "at", "reference")
# What a study's runs are, by the optional ``kind`` key of its [base]: VAEs (``vaeconverge train``) by default,
# or black-box variational inference (``vaeconverge bbvi``).
KINDS: dict[str, type[RunConfig] | type[BBVIConfig]] = {"vae": RunConfig, BBVI_KIND: BBVIConfig}
Config = RunConfig | BBVIConfig


def config_from_dict(values: dict[str, Any]) -> Config:
    """The run configuration a store or a summary holds, of the class its ``kind`` names (none: a VAE)."""
    return KINDS[values.get("kind", "vae")].from_dict(values)


class SpecError(ValueError):
    """A sweep specification that cannot be used; ``where`` names the file and line, or the key."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


@dataclass(frozen=True)
class Finding:
    """A prediction about a sweep's runs: ``metric`` (a summary key, dotted for nested ones) is ``expect``ed to
    decrease or increase along the runs, to be lowest at the run labelled ``at``, or to be true for all runs;
    ``reference``, "1/x", draws the theory's inverse scaling through the first run in the trend figure."""

    statement: str
    metric: str
    expect: str
    at: str | None = None
    reference: str | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: the base options, the grid axes and the zipped axes (each a list of values)."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zipped: dict[str, list[Any]] = field(default_factory=dict)
    description: str = ""
    finding: Finding | None = None
    source: str = ""  # the TOML text, kept so that a store can say what it ran
    kind: str = "vae"  # a key of KINDS
    quick: dict[str, list[Any]] = field(default_factory=dict)  # axes' values in the quick version (reproduce)
    quick_base: dict[str, Any] = field(default_factory=dict)  # options of the quick version's base
    quick_by_default: bool = True  # whether reproduce --quick runs it without being named
    paper: bool = False  # a study of the paper's protocol, run by reproduce --paper alone

    @property
    def axes(self) -> list[str]:
        """The options that vary, grid axes first."""
        return [*self.grid, *self.zipped]

    def quickened(self, base: dict[str, Any]) -> SweepSpec:
        """The study's quick version: ``base`` options over its own, then its ``[quick]`` options and axis values."""
        return dataclasses.replace(
            self, base={**self.base, **base, **self.quick_base},
            grid={k: self.quick.get(k, v) for k, v in self.grid.items()},
            zipped={k: self.quick.get(k, v) for k, v in self.zipped.items()})

    def label(self, config: Config) -> str:
        """The run's axis values, e.g. ``batch_size=16``."""
        values = config.to_dict()
        return ", ".join(f"{axis}={_shown(values[axis])}" for axis in self.axes) or "base"

    def runs(self) -> list[Config]:
        """Every configuration of the sweep, validated; grid product outermost, then the zipped values."""
        zipped = [dict(zip(self.zipped, values, strict=True)) for values in zip(*self.zipped.values(), strict=True)]
        configs = []
        for point in itertools.product(*self.grid.values()):
            for varied in zipped or [{}]:
                values = {**self.base, **dict(zip(self.grid, point, strict=True)), **varied}
                try:
                    configs.append(KINDS[self.kind].from_dict(values).validate())
                except (ConfigError, TypeError) as exc:  # TypeError: a value of the wrong kind for its option
                    label = ", ".join(f"{key}={_shown(values[key])}" for key in self.axes) or "the base run"
                    raise SpecError(f"run {label}", str(exc)) from None
        return configs


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; a missing, malformed or inconsistent file raises :class:`SpecError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), f"cannot read the sweep file ({exc.strerror or exc})") from None
    return parse_spec(text, str(path), default_name=path.stem)


def parse_spec(text: str, source: str = "<spec>", default_name: str = "sweep") -> SweepSpec:
    """Parse TOML ``text`` (``source`` names it in errors) into a :class:`SweepSpec`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(source, f"not valid TOML: {exc}") from None
    for key in raw:
        if key not in TOP_LEVEL:
            raise SpecError(f"{source}: {key}", f"unknown key{_suggest(key, TOP_LEVEL)}; a sweep has "
                                                f"{', '.join(TOP_LEVEL)}")
    table = raw.get("base", {})
    kind = table.get("kind", "vae") if isinstance(table, dict) else "vae"
    if kind not in KINDS:
        raise SpecError(f"{source}: base.kind", f"one of {', '.join(KINDS)} (got {kind!r})")
    known = [f.name for f in dataclasses.fields(KINDS[kind])]
    base = _options({k: v for k, v in table.items() if k != "kind"} if isinstance(table, dict) else table, "base",
                    source, known)
    if "seeds" in raw:
        base["seeds"] = _seeds(raw["seeds"], base.get("seed", 0), source)
    elif isinstance(base.get("seeds"), int):
        base["seeds"] = _seeds(base["seeds"], base.get("seed", 0), source)
    grid = _axes(raw.get("grid", {}), "grid", source, known)
    zipped = _axes(raw.get("zip", {}), "zip", source, known)
    lengths = {key: len(values) for key, values in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise SpecError(f"{source}: zip", f"zipped axes must have equal lengths (got {lengths})")
    both = sorted(set(grid) & set(zipped))
    if both:
        raise SpecError(f"{source}: zip.{both[0]}", "is also a grid axis")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise SpecError(f"{source}: name", "must be a non-empty string")
    quick_table = _options(raw.get("quick", {}), "quick", source, known)
    quick_base = {key: value for key, value in quick_table.items() if not isinstance(value, list)}
    quick = _axes({key: value for key, value in quick_table.items() if key not in quick_base}, "quick", source, known)
    for key in quick:
        if key not in grid and key not in zipped:
            raise SpecError(f"{source}: quick.{key}",
                            f"not an axis of the sweep (its axes: {', '.join([*grid, *zipped])})")
    for key in quick_base:
        if key in grid or key in zipped:
            raise SpecError(f"{source}: quick.{key}", "is an axis: give its quick values as a list")
    quick_by_default = raw.get("quick_by_default", True)
    if not isinstance(quick_by_default, bool):
        raise SpecError(f"{source}: quick_by_default", f"must be true or false (got {quick_by_default!r})")
    paper = raw.get("paper", False)
    if not isinstance(paper, bool):
        raise SpecError(f"{source}: paper", f"must be true or false (got {paper!r})")
    if quick.keys() & zipped.keys() and (quick.keys() & zipped.keys() != zipped.keys()
                                         or len({len(quick[k]) for k in zipped}) > 1):
        raise SpecError(f"{source}: quick", f"gives the zipped axes {', '.join(zipped)} together, of equal lengths")
    finding = _finding(raw["finding"], source) if "finding" in raw else None
    spec = SweepSpec(name, base, grid, zipped, str(raw.get("description", "")), finding, text, kind, quick,
                     quick_base, quick_by_default, paper)
    for version in (spec, spec.quickened({})):
        if finding is not None and finding.expect == "lowest-at":
            labels = [version.label(config) for config in version.runs()]
            if finding.at not in labels:
                raise SpecError(f"{source}: finding.at", f"{finding.at!r} is not a run of the sweep; its runs are "
                                                         f"{', '.join(labels)}")
        _check_distinct(version.runs(), source)  # every configuration valid and distinct before anything runs
    return spec


def _check_distinct(configs: list[Config], source: str) -> None:
    """Two runs of one sweep with the same configuration would be one run: a repeated axis value."""
    seen: dict[Config, int] = {}
    for position, config in enumerate(configs):
        if config in seen:
            raise SpecError(source, f"runs {seen[config] + 1} and {position + 1} have the same configuration "
                                    "(a repeated axis value?)")
        seen[config] = position


def _finding(table: Any, source: str) -> Finding:
    if not isinstance(table, dict):
        raise SpecError(f"{source}: finding", "must be a table")
    for key in table:
        if key not in FINDING_KEYS:
            raise SpecError(f"{source}: finding.{key}", f"unknown key{_suggest(key, FINDING_KEYS)}")
    for key in ("statement", "metric", "expect"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise SpecError(f"{source}: finding.{key}", "required, a non-empty string")
    if table["expect"] not in EXPECTATIONS:
        raise SpecError(f"{source}: finding.expect", f"one of {', '.join(EXPECTATIONS)} (got {table['expect']!r})")
    if (table["expect"] == "lowest-at") != ("at" in table):
        raise SpecError(f"{source}: finding.at", "names the run (its label, e.g. 'softclip_s=5') exactly when "
                                                 "expect is lowest-at")
    if table["expect"] == "snr-scaling" and table["metric"] != "snr":
        raise SpecError(f"{source}: finding.metric", f"is 'snr' for expect = 'snr-scaling' (got {table['metric']!r})")
    if table.get("reference") not in (None, "1/x"):
        raise SpecError(f"{source}: finding.reference", f"the only reference is '1/x' (got {table['reference']!r})")
    if table["metric"].split(".")[0] not in SUMMARY_KEYS:
        raise SpecError(f"{source}: finding.metric", f"{table['metric']!r} is not a key of a run's summary.json"
                                                     f"{_suggest(table['metric'].split('.')[0], SUMMARY_KEYS)}")
    return Finding(table["statement"], table["metric"], table["expect"], table.get("at"), table.get("reference"))


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _options(table: Any, where: str, source: str, known: list[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SpecError(f"{source}: {where}", "must be a table of options")
    options = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise SpecError(f"{source}: {where}.{key}", f"unknown option{_suggest(name, known)}")
        options[name] = value
    return options


def _axes(table: Any, where: str, source: str, known: list[str]) -> dict[str, list[Any]]:
    axes = _options(table, where, source, known)
    for key, values in axes.items():
        if not isinstance(values, list):
            raise SpecError(f"{source}: {where}.{key}", f"an axis is a list of values (got {values!r})")
        if not values:
            raise SpecError(f"{source}: {where}.{key}", "empty axis: give at least one value")
    return axes


def _seeds(value: Any, first: int, source: str) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, int | list):
        raise SpecError(f"{source}: seeds", f"a count or a list of seeds (got {value!r})")
    if isinstance(value, int):
        if value < 1:
            raise SpecError(f"{source}: seeds", f"the number of seeds must be at least 1 (got {value})")
        return list(range(first, first + value))
    return value


def _suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

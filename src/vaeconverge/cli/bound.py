"""``vaeconverge bound``: the bound of a finished run (redrawing its figure), or of constants given by hand."""

from __future__ import annotations

import argparse
import errno
import math
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..engine.checkpoint import atomic_write
from ..engine.outputs import RunFolderError, read_run
from ..optim import bound_family, uncovered_reason
from ..report.figures import plot_run
from ..report.readings import bound_text, rate_text
from ..sweeps.grid import KINDS, Config, config_from_dict
from ..theory.assessment import (
    BOUND_NAMES,
    REFERENCES,
    Constants,
    assess_run,
    bound_curve,
    compare_runs,
    not_applicable,
)
from ..theory.bounds import sgd_constant_bound, sgd_constant_step
from ..theory.run import AssessedRun


def _read(option: str, run_dir: Path) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """:func:`read_run`, a folder it cannot read being an error of ``option``."""
    try:
        return read_run(run_dir)
    except RunFolderError as exc:
        raise ConfigError(option, str(exc)) from None


def _measured(option: str, run_dir: Path, metrics: list[dict[str, float]]) -> None:
    """Every checkpoint must hold a finite ||grad L||^2: the bound is held against it, and a NaN would read as a
    violated bound (``train`` and ``bbvi`` stop a diverging run before writing it, so this is a damaged table)."""
    for row in metrics:
        if not math.isfinite(row["grad_sq_norm"]):
            raise ConfigError(option, f"{Path(run_dir) / 'metrics.csv'}: grad_sq_norm is {row['grad_sq_norm']} at "
                                      f"seed {row['seed']:.0f}, step {row['step']:.0f}; a bound is held against "
                                      "finite measurements only (damaged, or a diverged run)")


def _constants(option: str, run_dir: Path, summary: dict[str, Any]) -> Constants:
    if summary.get("constants") is None:
        raise ConfigError(option, f"{run_dir}: the run has no estimated constants (trained with --no-constants)")
    try:
        return Constants.from_dict(summary["constants"])
    except ValueError as exc:
        raise ConfigError(option, f"{Path(run_dir) / 'summary.json'}: {exc} (written by another version, or "
                                  "damaged)") from exc


def _config(option: str, run_dir: Path, summary: dict[str, Any]) -> Config:
    """The run's configuration, checked as ``train`` (or ``bbvi``) checked it before the run."""
    where = Path(run_dir) / "summary.json"
    values = summary["config"]
    kind = values.get("kind", "vae")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigError(option, f"{where}: config.kind {kind!r} is not a kind of run of this version "
                                  f"({', '.join(KINDS)})")
    try:
        return config_from_dict(values).validate()
    except (ConfigError, TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(option, f"{where}: its config is not a valid {kind} run's ({exc}; "
                                  "written by another version, or damaged)") from None


def _redraw(run_dir: Path, metrics: list[dict[str, float]], summary: dict[str, Any]) -> None:
    """Redraw the run's convergence.png with its bound; where the folder cannot be written, keep the old figure
    (atomic_write leaves it whole, and no temporary file) and say so on stderr: reading the bound needs no write."""
    path = Path(run_dir) / "convergence.png"
    try:
        atomic_write(path, lambda tmp: plot_run(metrics, summary, tmp))
    except OSError as exc:
        unwritable = isinstance(exc, PermissionError) or exc.errno == errno.EROFS
        why = f"{run_dir} is not writable" if unwritable else f"could not write into {run_dir}"
        print(f"vaeconverge bound: warning: {path} not redrawn: {why} ({exc.strerror or exc})", file=sys.stderr)


def bound_from_run(run_dir: Path, compare: Path | None = None) -> dict[str, Any]:
    """Recompute the run's assessment from its stored metrics and constants; redraw its convergence.png (where
    the folder is writable). Both folders are read and checked before anything is computed or drawn; a damaged
    one is a :class:`ConfigError` of ``--from`` or ``--compare``."""
    metrics, summary = _read("--from", run_dir)
    _measured("--from", run_dir, metrics)
    constants = _constants("--from", run_dir, summary)
    config = _config("--from", run_dir, summary)
    if compare is not None:
        other_metrics, other = _read("--compare", compare)
        _measured("--compare", compare, other_metrics)
        _constants("--compare", compare, other)
    batches_per_epoch = summary["data"]["n"] // config.batch_size
    assessment = assess_run(config.assessed(), metrics, constants, batches_per_epoch)
    summary = {**summary, **assessment.summary, "config": config.to_dict()}
    metrics = assessment.apply(metrics)
    keys = ("constants", "bound", "random_iterate", "rate_slope", "rate_ci", "rate", "paper_shape")
    report = {key: summary[key] for key in keys}
    report = {"run": str(run_dir), "steps": summary["steps"], "optimizer": config.optimizer, **report}
    if compare is not None:
        report["comparison"] = compare_runs(summary, metrics, other, other_metrics)
    _redraw(run_dir, metrics, summary)
    return report


def bound_calculator(args: argparse.Namespace) -> dict[str, Any]:
    """The bound for the optimizer named in ``args`` from constants given on the command line: the run
    assessment's own bound (``theory.assessment``), refused where it refuses a run."""
    for flag, value in (("--L", args.L), ("--delta", args.delta), ("--lr", args.lr), ("--steps", args.steps)):
        if value is None:
            raise ConfigError(flag, "required without --from")
    if args.sigma2 is not None:
        sigma2_x, sigma2_eps = args.sigma2 * args.batch_size, 0.0
    elif args.sigma2_x is not None and args.sigma2_eps is not None:
        sigma2_x, sigma2_eps = args.sigma2_x, args.sigma2_eps
    else:
        raise ConfigError("--sigma2", "required without --from (or give --sigma2-x and --sigma2-eps)")
    family = bound_family(args.optimizer)
    if family in ("adam", "adagrad"):
        for flag, value in (("--R", args.R), ("--d", args.d)):
            if value is None:
                raise ConfigError(flag, f"required for the {args.optimizer} bound")
    run = AssessedRun(optimizer=args.optimizer, bound_family=family, lr=args.lr, betas=tuple(args.adam_betas),
                      eps=args.eps, schedule=args.schedule, schedule_power=args.schedule_power,
                      batch_size=args.batch_size, samples=args.samples, uncovered=uncovered_reason(args.optimizer))
    try:
        constants = Constants(L=args.L, sigma2_x=sigma2_x, sigma2_eps=sigma2_eps, R=args.R or 0.0, a=0.0,
                              delta=args.delta, d=args.d or 1, batch_size=args.batch_size, samples=args.samples,
                              delta_reference="given")
        gammas = run.step_sizes(args.steps, 1)
        reason = not_applicable(run, constants, gammas)
        value = None if reason else float(bound_curve(run, constants, gammas, [args.steps])[0])
    except ValueError as exc:
        raise ConfigError("bound", str(exc)) from exc
    if reason:
        raise ConfigError("--optimizer", f"no bound applies: {reason}")
    inputs = {"L": args.L, "sigma2": constants.sigma2, "delta": args.delta, "lr": args.lr, "steps": args.steps,
              "schedule": args.schedule, "batch_size": args.batch_size, "samples": args.samples}
    if family != "sgd":
        inputs.update(R=args.R, d=args.d, eps=args.eps)
    bound: dict[str, Any] = {"name": BOUND_NAMES[family], "status": "applicable", "reference": REFERENCES[family],
                             "value": value}
    if family == "sgd":
        step = sgd_constant_step(args.L, constants.sigma2, args.delta, args.steps)
        bound["constant_step"] = {"lr": step, "value": sgd_constant_bound(args.L, constants.sigma2, args.delta,
                                                                         args.steps)}
    return {"inputs": inputs, "bound": bound}


def format_report(report: dict[str, Any]) -> str:
    """Plain-text rendering of a report from :func:`bound_from_run` or :func:`bound_calculator`."""
    lines: list[str] = []
    bound = report.get("bound") or {}
    if "run" in report:
        lines.append(f"run {report['run']}: {report['optimizer']}, {report['steps']} steps")
        c = report["constants"]
        lines.append(f"  constants: L = {c['L']:.4g}, sigma2 = {c['sigma2']:.4g} (sigma2_x = {c['sigma2_x']:.4g}, "
                     f"sigma2_eps = {c['sigma2_eps']:.4g}, B = {c['batch_size']}, K = {c['samples']}), "
                     f"delta = {c['delta']:.4g} ({c['delta_reference']}), R = {c['R']:.4g}, d = {c['d']}")
        lines.append("  provenance: " + ", ".join(f"{k} {v}" for k, v in c.get("provenance", {}).items()))
        ri = report["random_iterate"]
        lines.append(f"  measured: step-weighted random iterate E||grad||^2 = {ri['step_weighted_mean']:.4g}, "
                     f"uniform {ri['uniform_mean']:.4g}, running minimum {ri['running_min']:.4g}")
        if report.get("rate"):
            lines.append(f"  rate: {rate_text(report['rate'])}")
    else:
        lines.append("inputs: " + ", ".join(f"{k} = {v}" for k, v in report["inputs"].items()))
    shape = report.get("paper_shape")
    if shape:
        lines.append(f"  paper's {shape['name']} shape fitted to the measured curve: c1 = {shape['c1']:.3g} "
                     f"(1/sqrt n term), c2 = {shape['c2']:.3g} (log n / sqrt n noise term)")
    if "run" in report:
        lines.append(f"  bound: {bound_text(bound)}")
    else:
        lines.append(f"  bound ({bound['name']}, {bound['reference']}): E||grad L(theta_R)||^2 <= {bound['value']:.4g}")
    if "constant_step" in bound:
        step = bound["constant_step"]
        lines.append(f"    Ghadimi & Lan's constant step for n steps (Cor. 2.2), lr = {step['lr']:.4g}, comes with "
                     f"the simpler bound {step['value']:.4g}")
    if bound.get("best_allocation"):
        b = bound["best_allocation"]
        lines.append(f"  the same bound over the same budget of B*K*n = {b['budget']} gradient evaluations is "
                     f"smallest at B = {b['batch_size']}, K = {b['samples']}, n = {b['steps']} ({b['bound']:.4g})")
    if "comparison" in report:
        cmp = report["comparison"]
        old, new = cmp["from"], cmp["to"]
        lines.append(f"  (B, K) = ({old['batch_size']}, {old['samples']}) -> ({new['batch_size']}, {new['samples']}): "
                     f"noise term x{cmp['predicted_noise_ratio']:.3g} predicted; measured: gradient noise "
                     f"x{cmp['measured_noise_ratio']:.3g}, squared-gradient-norm floor "
                     f"x{cmp['measured_floor_ratio']:.3g} (last quarter of each run)")
    return "\n".join(lines)


"""``vaeconverge bound``: the bound of a finished run (redrawing its figure), or of constants given by hand."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError
from ..engine.checkpoint import atomic_write
from ..engine.outputs import read_run
from ..optim import schedule_factor
from ..report.figures import plot_run
from ..sweeps.grid import config_from_dict
from ..theory.assessment import ADAGRAD_EPS, ADAM_EPS, Constants, assess_run, compare_runs
from ..theory.bounds import (
    adagrad_bound,
    adam_bound,
    ghadimi_lan,
    noise_variance,
    sgd_constant_bound,
    sgd_decreasing_bound,
)
from .readings import rate_text


def _constants(option: str, run_dir: Path, summary: dict[str, Any]) -> Constants:
    if summary.get("constants") is None:
        raise ConfigError(option, f"{run_dir}: the run has no estimated constants (trained with --no-constants)")
    try:
        return Constants.from_dict(summary["constants"])
    except ValueError as exc:
        raise ConfigError(option, f"{run_dir}: {exc} (written by another version? train it again)") from exc


def bound_from_run(run_dir: Path, compare: Path | None = None) -> dict[str, Any]:
    """Recompute the run's assessment from its stored metrics and constants; redraw its convergence.png."""
    metrics, summary = read_run(run_dir)
    constants = _constants("--from", run_dir, summary)
    config = config_from_dict(summary["config"])
    batches_per_epoch = summary["data"]["n"] // config.batch_size
    assessment = assess_run(config.assessed(), metrics, constants, batches_per_epoch)
    summary.update(assessment.summary)
    metrics = assessment.apply(metrics)
    atomic_write(Path(run_dir) / "convergence.png", lambda tmp: plot_run(metrics, summary, tmp))
    keys = ("constants", "bound", "random_iterate", "rate_slope", "rate_ci", "rate", "paper_shape")
    report = {key: summary[key] for key in keys}
    report = {"run": str(run_dir), "steps": summary["steps"], "optimizer": config.optimizer, **report}
    if compare is not None:
        other_metrics, other = read_run(compare)
        _constants("--compare", compare, other)
        report["comparison"] = compare_runs(summary, metrics, other, other_metrics)
    return report


def bound_calculator(args: argparse.Namespace) -> dict[str, Any]:
    """The bound for the optimizer named in ``args`` from constants given on the command line."""
    for flag, value in (("--L", args.L), ("--delta", args.delta), ("--lr", args.lr), ("--steps", args.steps)):
        if value is None:
            raise ConfigError(flag, "required without --from")
    if args.sigma2 is not None:
        sigma2 = args.sigma2
    elif args.sigma2_x is not None and args.sigma2_eps is not None:
        sigma2 = noise_variance(args.sigma2_x, args.sigma2_eps, args.batch_size, args.samples)
    else:
        raise ConfigError("--sigma2", "required without --from (or give --sigma2-x and --sigma2-eps)")
    factor = schedule_factor(args.schedule, args.schedule_power, 1)
    gammas = args.lr * np.array([factor(t) for t in range(args.steps)])
    inputs = {"L": args.L, "sigma2": sigma2, "delta": args.delta, "lr": args.lr, "steps": args.steps,
              "schedule": args.schedule, "batch_size": args.batch_size, "samples": args.samples}
    try:
        if args.optimizer == "sgd":
            bound = {"name": "ghadimi-lan", "value": ghadimi_lan(gammas, args.L, sigma2, args.delta),
                     "optimal_constant_step_value": sgd_constant_bound(args.L, sigma2, args.delta, args.steps)}
            if args.schedule == "sqrt" and args.schedule_power == 0.5 and args.lr <= 1 / args.L:
                bound["closed_form_value"] = sgd_decreasing_bound(args.L, sigma2, args.delta, args.lr, args.steps)
        else:
            for flag, value in (("--R", args.R), ("--d", args.d)):
                if value is None:
                    raise ConfigError(flag, f"required for the {args.optimizer} bound")
            inputs.update(R=args.R, d=args.d)
            if args.optimizer == "adam":
                value = adam_bound(args.lr, *args.adam_betas, ADAM_EPS, args.R, args.L, args.delta, args.d, args.steps)
            else:
                value = adagrad_bound(args.lr, ADAGRAD_EPS, args.R, args.L, args.delta, args.d, args.steps)
            bound = {"name": f"defossez-{args.optimizer}", "value": value}
    except ValueError as exc:
        raise ConfigError("bound", str(exc)) from exc
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
    if bound.get("value") is not None:
        lines.append(f"  bound ({bound['name']}): E||grad L(theta_R)||^2 <= {bound['value']:.4g}")
    else:
        lines.append(f"  bound ({bound.get('name', 'none')}): not applicable: {bound.get('note', '')}")
    for key, label in (("closed_form_value", "closed form, gamma_k = lr / sqrt k"),
                       ("optimal_constant_step_value", "with the optimal constant step")):
        if key in bound:
            lines.append(f"    {label}: {bound[key]:.4g}")
    if "best_allocation" in bound:
        b = bound["best_allocation"]
        lines.append(f"  for the same budget of B*K*n = {b['budget']} gradient evaluations the bound is smallest at "
                     f"B = {b['batch_size']}, K = {b['samples']}, n = {b['steps']} ({b['bound']:.4g})")
    if "comparison" in report:
        cmp = report["comparison"]
        old, new = cmp["from"], cmp["to"]
        lines.append(f"  (B, K) = ({old['batch_size']}, {old['samples']}) -> ({new['batch_size']}, {new['samples']}): "
                     f"noise term x{cmp['predicted_noise_ratio']:.3g} predicted; measured: gradient noise "
                     f"x{cmp['measured_noise_ratio']:.3g}, squared-gradient-norm floor "
                     f"x{cmp['measured_floor_ratio']:.3g} (last quarter of each run)")
    return "\n".join(lines)


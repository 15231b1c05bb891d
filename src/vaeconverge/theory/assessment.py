"""A finished run held against the theory: its random iterate, fitted rate, and the bound for its optimizer.

Everything here is a function of values: what the theory reads of the run (:class:`~.run.AssessedRun`), its
metric rows and its estimated :class:`Constants`, so ``vaeconverge train``, BBVI, the ConvergenceMonitor and
``vaeconverge bound --from`` give the same answer. Nothing is mutated: an :class:`Assessment` holds the summary
entries and the new metric columns.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..diagnostics.random_iterate import random_iterate, weighted_mean_curve
from ..diagnostics.rate import classify, fit_rate, tail_mean
from ..diagnostics.seeds import BAND_KEYS, bands, by_seed, seed_matrix, seed_mean
from .bounds import (
    adagrad_bound,
    adam_bound,
    best_allocation,
    fit_shape,
    ghadimi_lan,
    ghadimi_lan_curve,
    iwae_basis,
    noise_variance,
    predict_noise_ratio,
    vae_adam_basis,
)
from .run import AssessedRun

CANDIDATE_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CANDIDATE_SAMPLES = (1, 2, 5, 10, 20, 50, 100)

# Where each constant comes from (``Constants.provenance``): "exact" (a closed form), "provable" (a bound that
# holds with certainty, up to a stated Monte Carlo margin) or "estimate" (measured on the run, with a safety
# margin but no guarantee).
PROVENANCES = ("exact", "provable", "estimate")
ESTIMATED = {"L": "estimate", "sigma2": "estimate", "delta": "estimate", "R": "estimate"}

# A bound above this many times the largest step-weighted mean measured along the run says nothing about it.
VACUOUS_FACTOR = 100.0

BOUND_NAMES = {"sgd": "ghadimi-lan", "adam": "defossez-adam", "adagrad": "defossez-adagrad"}
REFERENCES = {
    "sgd": "Ghadimi & Lan, SIAM J. Optim. 2013, Thm 2.1 (randomized SGD)",
    "adam": "Defossez, Bottou, Bach, Usunier, TMLR 2022, Thm 2 (Adam)",
    "adagrad": "Defossez, Bottou, Bach, Usunier, TMLR 2022, Thm 1 (Adagrad)",
}
# The optimizers the paper's deep-VAE rate shape describes (Adam and its variants).
ADAM_LIKE = ("adam", "adam-defossez", "amsgrad")


# The constants that are non-negative numbers (L positive: the bounds divide by it), and those that count.
_CONSTANT_NUMBERS = ("L", "sigma2_x", "sigma2_eps", "R", "a", "delta")
_CONSTANT_COUNTS = ("d", "batch_size", "samples")


@dataclass(frozen=True)
class Constants:
    """The constants the bounds need, measured on the run (see ``diagnostics/constants.py``), and where each of
    L, sigma2, delta and R comes from (``provenance``: one of :data:`PROVENANCES` each)."""

    L: float  # smoothness: largest |Hessian eigenvalue| seen along the trajectory, with a safety margin
    sigma2_x: float  # between-example gradient variance (upper confidence bound)
    sigma2_eps: float  # Monte Carlo gradient variance of one sample, so sigma^2(B, K) = sx/B + se/(BK)
    R: float  # largest gradient coordinate seen
    a: float  # largest parameter magnitude seen, the theory's weight bound ||theta||_inf <= a
    delta: float  # objective at initialisation (plus a margin) minus a lower bound on its infimum
    d: int  # number of trained parameters
    batch_size: int
    samples: int
    delta_reference: str  # what the lower bound on the infimum was
    provenance: dict[str, str] = dataclasses.field(default_factory=lambda: dict(ESTIMATED))

    @property
    def sigma2(self) -> float:
        """Gradient noise variance at the run's own (B, K)."""
        return noise_variance(self.sigma2_x, self.sigma2_eps, self.batch_size, self.samples)

    def scaled(self, factor: float) -> Constants:
        """These constants with L, sigma2 (both parts), delta and R multiplied by ``factor``."""
        return dataclasses.replace(self, L=self.L * factor, sigma2_x=self.sigma2_x * factor,
                                   sigma2_eps=self.sigma2_eps * factor, delta=self.delta * factor, R=self.R * factor)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sigma2": self.sigma2}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Constants:
        """Inverse of :meth:`to_dict`; a missing entry, or one that is not the number it must be (L positive,
        the other constants >= 0, the counts positive integers), is a ValueError naming it. A summary written
        before provenances were recorded reads as all estimates."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"provenance"}
        missing = sorted(fields - set(values))
        if missing:
            raise ValueError(f"the constants block lacks {', '.join(missing)}")
        for name in (*_CONSTANT_NUMBERS, *_CONSTANT_COUNTS):
            value, count = values[name], name in _CONSTANT_COUNTS
            number = not isinstance(value, bool) and isinstance(value, int if count else int | float)
            if not number or value < 0 or (value == 0 and (count or name == "L")):
                wanted = "a positive integer" if count else "a positive number" if name == "L" else "a number >= 0"
                raise ValueError(f"the constant {name} must be {wanted} (got {value!r})")
        return cls(**{k: values[k] for k in fields}, provenance=dict(values.get("provenance") or ESTIMATED))


def not_applicable(run: AssessedRun, constants: Constants, gammas: np.ndarray) -> str | None:
    """Why no bound of this package covers ``run`` (None: one does). ``gammas`` are the step sizes applied at
    iterates 0..n-1 (and after n)."""
    if not run.smooth:
        return (f"the network uses {run.activation}, which is not smooth: the theorems need a Lipschitz gradient "
                "and no finite L exists (use --activation softclip)")
    if run.bound_family is None:
        return run.uncovered or f"no convergence bound is implemented for {run.optimizer}"
    if run.bound_family == "sgd":
        if run.momentum:
            return "Ghadimi-Lan covers plain SGD; this run uses momentum"
        if gammas[:-1].max() >= 2 / constants.L:
            return f"a step size reaches 2/L = {2 / constants.L:.3g}: the SGD bound needs every step below 2/L"
        return None
    if np.ptp(gammas) > 0:
        return (f"the {run.bound_family.capitalize()} bound is stated for a constant base step size; this run's "
                f"varies from {gammas.min():.3g} to {gammas.max():.3g}")
    if run.bound_family == "adam" and not run.betas[0] < run.betas[1]:
        return f"the Adam bound needs beta1 < beta2, got {run.betas}"
    return None


def bound_curve(run: AssessedRun, constants: Constants, gammas: np.ndarray, steps: Sequence[int]) -> np.ndarray:
    """The bound of ``run``'s optimizer after each of ``steps`` steps (inf where it is not yet defined, such
    as before the first step); call only where :func:`not_applicable` gives None."""
    c = constants
    steps = np.asarray(steps)
    if run.bound_family == "sgd":
        curve = ghadimi_lan_curve(gammas[:-1], c.L, c.sigma2, c.delta)
        return np.array([curve[s - 1] if s > 0 else math.inf for s in steps])
    if run.bound_family == "adam":
        beta1, beta2 = run.betas
        return np.array([adam_bound(run.lr, beta1, beta2, run.eps, c.R, c.L, c.delta, c.d, int(s))
                         if s > beta1 / (1 - beta1) else math.inf for s in steps])
    return np.array([adagrad_bound(run.lr, run.eps, c.R, c.L, c.delta, c.d, int(s)) if s > 0 else math.inf
                     for s in steps])


def sensitivity(run: AssessedRun, constants: Constants, gammas: np.ndarray, steps: int, measured: float
                ) -> float | None:
    """The factor by which L, sigma2, delta and R together would have to be wrong for the verdict to flip: too
    large where the bound holds, too small where it is violated (>= 1; None: no factor up to 10^6 flips it).
    The first flip on a grid of 20 factors per decade, refined by bisection on the log of the factor; scaled
    constants under which the bound no longer applies (a step size reaching 2/L) count as not holding."""

    def holds(exponent: float) -> bool:
        scaled = constants.scaled(10.0**exponent)
        if not_applicable(run, scaled, gammas) is not None:
            return False
        return bool(measured <= bound_curve(run, scaled, gammas, [steps])[0])

    verdict = holds(0.0)
    direction = -1.0 if verdict else 1.0  # smaller constants lower the bound, larger ones raise it
    previous = 0.0
    for k in range(1, 121):
        exponent = direction * k / 20
        if holds(exponent) != verdict:
            low, high = previous, exponent
            for _ in range(40):
                middle = (low + high) / 2
                low, high = (middle, high) if holds(middle) == verdict else (low, middle)
            return float(10.0 ** abs(high))
        previous = exponent
    return None


def allocation_bound(run: AssessedRun, constants: Constants, batches_per_epoch: int
                     ) -> Callable[[int, int, int, float], float]:
    """The run's own SGD bound for another allocation (B, K, n, sigma2): its schedule's step sizes over n steps
    (epochs rescaled to B), inf where a step reaches 2/L."""
    examples = batches_per_epoch * run.batch_size

    def bound(batch_size: int, samples: int, n: int, sigma2: float) -> float:
        gammas = run.step_sizes(n, max(round(examples / batch_size), 1))[:-1]
        if gammas.max() >= 2 / constants.L:
            return math.inf
        return ghadimi_lan(gammas, constants.L, sigma2, constants.delta)

    return bound


@dataclass(frozen=True)
class Assessment:
    """A run held against the theory: its ``summary`` entries, and ``columns`` of values per metrics row (in the
    rows' order) that :meth:`apply` adds to the rows."""

    summary: dict[str, Any]
    columns: dict[str, list[float]]

    def apply(self, metrics: Sequence[dict[str, float]]) -> list[dict[str, float]]:
        """New rows: ``metrics`` with this assessment's columns set."""
        return [row | {key: values[i] for key, values in self.columns.items()} for i, row in enumerate(metrics)]


def assess(run: AssessedRun, metrics: Sequence[dict[str, float]], constants: Constants | None,
           batches_per_epoch: int, gammas: np.ndarray | None = None) -> Assessment:
    """The ``random_iterate``, ``bound`` and ``paper_shape`` entries of one series of checkpoints, with the
    columns ``random_iterate`` (step-weighted mean up to each checkpoint) and ``bound`` (NaN where no bound
    applies). ``gammas``, the step sizes applied at iterates 0..n, default to the run's schedule
    (:meth:`AssessedRun.step_sizes`); a run whose step sizes were measured passes them instead."""
    steps = [int(row["step"]) for row in metrics]
    values = [row["grad_sq_norm"] for row in metrics]
    if gammas is None:
        gammas = run.step_sizes(steps[-1], batches_per_epoch)
    measured = weighted_mean_curve(steps, values, gammas)
    out: dict[str, Any] = {"random_iterate": random_iterate(steps, values, gammas, seed=run.seed).to_dict()}
    columns = {"random_iterate": [float(v) for v in measured], "bound": [math.nan] * len(metrics)}
    if constants is None:
        out["bound"] = out["paper_shape"] = None
        return Assessment(out, columns)
    out["bound"] = bound = bound_entry(run, constants, gammas, steps, measured, batches_per_epoch)
    if bound["status"] == "applicable":
        columns["bound"] = [float(v) for v in bound_curve(run, constants, gammas, steps)]
    out["paper_shape"] = paper_shape(run, constants, steps, values)
    return Assessment(out, columns)


def bound_entry(run: AssessedRun, constants: Constants, gammas: np.ndarray, steps: Sequence[int],
                measured: np.ndarray, batches_per_epoch: int) -> dict[str, Any]:
    """The summary's ``bound``: whether a theorem covers the run (``status``, ``reason``), and where one does its
    ``value`` after the last step, whether the step-weighted mean ``measured`` there ``holds`` below it, whether
    it is ``vacuous`` (above :data:`VACUOUS_FACTOR` times the largest step-weighted mean along the run), its
    ``sensitivity`` and, for SGD with the VAE's noise form, the ``best_allocation`` of the same budget under the
    same bound."""
    reason = not_applicable(run, constants, gammas)
    family = run.bound_family
    entry: dict[str, Any] = {
        "name": BOUND_NAMES.get(family or "", "none"),
        "status": "not-applicable" if reason else "applicable",
        "reason": reason,
        "reference": REFERENCES.get(family or ""),
        "measured_step_weighted_mean": float(measured[-1]),
        "value": None, "holds": None, "vacuous": None, "sensitivity": None,
    }
    if reason:
        return entry
    value = float(bound_curve(run, constants, gammas, [steps[-1]])[0])
    finite = [v for v in measured if math.isfinite(v)]
    last = float(measured[-1])  # not finite (a NaN gradient): neither held nor violated
    entry.update(value=value, holds=bool(last <= value) if math.isfinite(last) else None,
                 vacuous=bool(value > VACUOUS_FACTOR * max(finite, default=math.inf)),
                 sensitivity=sensitivity(run, constants, gammas, steps[-1], last) if math.isfinite(last) else None)
    if family == "sgd" and run.per_example_noise:
        budget = run.batch_size * run.samples * steps[-1]
        best, _ = best_allocation(budget, constants.sigma2_x, constants.sigma2_eps, CANDIDATE_BATCH_SIZES,
                                  CANDIDATE_SAMPLES, allocation_bound(run, constants, batches_per_epoch))
        entry["best_allocation"] = {"budget": budget, **asdict(best)}
    return entry


def assess_run(run: AssessedRun, metrics: Sequence[dict[str, float]], constants: Constants | None,
               batches_per_epoch: int, gammas: np.ndarray | None = None) -> Assessment:
    """The assessment of a run of one or more seeds.

    The headline numbers and :func:`assess` are those of the seed-mean curve, the estimate of the expectation
    the theorems bound; the rate is fitted to that curve with an interval from the seeds, and read as a regime
    (``diagnostics/rate.py``); ``per_seed`` holds each seed's own numbers, and ``bands`` the spread over seeds at
    the last common checkpoint. Columns: each row's ``random_iterate`` (its own seed's) and the seed-mean
    ``bound`` at its step. ``gammas`` as in :func:`assess`.
    """
    mean_rows = seed_mean(metrics)
    pooled = assess(run, mean_rows, constants, batches_per_epoch, gammas)
    summary = {**headline(mean_rows), **rate_entries(metrics), **pooled.summary, "per_seed": []}
    _, last_se = seed_matrix(metrics, "grad_sq_norm_se")
    summary["grad_sq_norm_se"] = _or_none(float(np.sqrt(np.square(last_se[:, -1]).sum()) / len(last_se)))
    bound_at = dict(zip((row["step"] for row in mean_rows), pooled.columns["bound"], strict=True))
    own_curve: dict[tuple[int, float], float] = {}
    for seed, rows in by_seed(metrics).items():
        own = assess(dataclasses.replace(run, seed=seed), rows, None, batches_per_epoch, gammas)
        own_curve.update({(seed, row["step"]): value
                          for row, value in zip(rows, own.columns["random_iterate"], strict=True)})
        own_rate = fit_rate([row["step"] for row in rows], [[row["grad_sq_norm"] for row in rows]])
        summary["per_seed"].append({"seed": seed, **headline(rows), "random_iterate": own.summary["random_iterate"],
                                    "rate_slope": None if own_rate is None else own_rate.slope})
    summary["bands"] = {key: {name: series[-1] for name, series in bands(metrics, key).items() if name != "step"}
                        for key in BAND_KEYS}
    columns = {
        "random_iterate": [own_curve[(int(row.get("seed", 0)), row["step"])] for row in metrics],
        "bound": [bound_at.get(row["step"], math.nan) for row in metrics],
    }
    return Assessment(summary, columns)


def rate_entries(metrics: Sequence[dict[str, float]]) -> dict[str, Any]:
    """``rate_slope``, ``rate_ci`` ([low, high], None where one seed cannot give it), ``rate`` (the fit, its
    ``regime`` and the ``evidence``) and ``collapsed`` of a run's per-seed metrics."""
    steps, grads = seed_matrix(metrics, "grad_sq_norm")
    _, objective = seed_matrix(metrics, "objective")
    kl, active = (float(seed_matrix(metrics, key)[1][:, -1].mean()) for key in ("kl", "active_units"))
    rate = fit_rate(steps, grads)
    regime = classify(steps, grads, objective, rate, kl=kl, active_units=active)
    ci = None if rate is None or not all(map(math.isfinite, rate.ci)) else list(rate.ci)
    fit = rate.to_dict() if rate is not None else {"slope": None}
    return {
        "rate_slope": None if rate is None else rate.slope,
        "rate_ci": ci,
        "rate": {**fit, "regime": regime.label, "regime_name": regime.name, "evidence": regime.evidence},
        "collapsed": regime.evidence["collapsed"],
    }


def headline(rows: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Last-checkpoint values of a metrics series (None where not finite, e.g. the log-likelihood of a model
    without a closed form). The standard error of a seed mean is set by :func:`assess_run`. The minimum over the
    checkpoints is ``random_iterate``'s ``running_min``, labelled as biased low there."""
    last = rows[-1]
    return {
        "objective": last["objective"],
        "grad_sq_norm": last["grad_sq_norm"],
        "grad_sq_norm_se": _or_none(last.get("grad_sq_norm_se", math.nan)),
        "grad_sq_norm_biased": _or_none(last.get("grad_sq_norm_biased", math.nan)),
        "paper_proxy": _or_none(last["paper_proxy"]),
        "log_likelihood": _or_none(last["log_likelihood"]),
    }


def _or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def paper_shape(run: AssessedRun, c: Constants, steps: Sequence[int], values: Sequence[float]
                ) -> dict[str, Any] | None:
    """The paper's rate shape (IWAE, or deep VAE + Adam) with its two free constants fitted by least squares on
    the measured curve: how much of the curve is the 1/sqrt(n) term, how much the log(n)/sqrt(n) noise term.
    None for a run neither shape describes (a deep VAE under another optimizer than Adam or its variants
    :data:`ADAM_LIKE`), and when fewer than 3 positive checkpoints."""
    if run.objective != "iwae" and run.optimizer not in ADAM_LIKE:
        return None
    keep = [(s, v) for s, v in zip(steps, values, strict=True) if s > 0 and v > 0 and math.isfinite(v)]
    if len(keep) < 3:
        return None
    n = np.array([s for s, _ in keep], dtype=np.float64)
    if run.objective == "iwae":
        name, basis = "iwae", iwae_basis(n, c.delta, c.d, run.batch_size, run.samples)
    else:
        beta1 = run.betas[0]
        name, basis = "vae-adam", vae_adam_basis(n, c.delta, run.layers, max(c.a, 1e-12), c.d, beta1)
    coefficients = fit_shape(basis, [v for _, v in keep])
    return {"name": name, "c1": float(coefficients[0]), "c2": float(coefficients[1])}


def compare_runs(first: dict[str, Any], first_metrics: Sequence[dict[str, float]],
                 second: dict[str, Any], second_metrics: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Predicted change of the noise term sigma^2(B, K) from the first run's constants when moving to the
    second run's (B, K), next to two measured changes over the last quarter of each run (seed means): of the gradient
    noise itself (minibatch minus full-gradient squared norm, whose expectation is sigma^2(B, K)) and of
    the full-gradient squared norm (the floor the noise term sets)."""
    a, b = Constants.from_dict(first["constants"]), Constants.from_dict(second["constants"])
    predicted = predict_noise_ratio(a.sigma2_x, a.sigma2_eps, (a.batch_size, a.samples), (b.batch_size, b.samples))

    def levels(metrics: Sequence[dict[str, float]]) -> tuple[float, float]:
        steps = [row["step"] for row in metrics]
        noise = [row["batch_grad_sq_norm"] - row["grad_sq_norm"] for row in metrics]
        return tail_mean(steps, noise), tail_mean(steps, [row["grad_sq_norm"] for row in metrics])

    (noise_a, floor_a), (noise_b, floor_b) = levels(seed_mean(first_metrics)), levels(seed_mean(second_metrics))
    return {
        "from": {"batch_size": a.batch_size, "samples": a.samples},
        "to": {"batch_size": b.batch_size, "samples": b.samples},
        "predicted_noise_ratio": predicted,
        "measured_noise_ratio": noise_b / noise_a,
        "measured_floor_ratio": floor_b / floor_a,
    }

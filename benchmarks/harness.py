"""Shared machinery of the benchmarks: data, a fresh child process per measured variant, and the result table.

Every measured variant runs in its own child process (multiprocessing's "spawn" context), so that its peak
memory, ``getrusage(RUSAGE_SELF).ru_maxrss``, is its own and no variant profits from another's warm caches.
The child sets the thread count, builds its data, runs an untimed warm-up where the benchmark asks for one,
and times only the training; the parent only collects. The variants of a benchmark run round-robin, several
rounds, and each keeps its fastest run: slow spells of a shared machine then fall on all of them alike.
Not run on its own: see ``run_all.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# vaeconverge is imported where it is used, so that the processes of the naive loop and of Pythae neither load
# it nor count its memory.


@dataclass(frozen=True)
class Data:
    """Training data built inside the child: ``digits`` (vaeconverge's built-in set), or ``binary``: n x dim
    Bernoulli pixels, each feature with its own on-probability drawn uniformly from [0.1, 0.9]."""

    kind: str
    n: int = 0
    dim: int = 0
    seed: int = 0

    def load(self) -> torch.Tensor:
        """The (N, D) float32 tensor."""
        if self.kind == "digits":
            from vaeconverge.config import RunConfig
            from vaeconverge.data import load_dataset

            return load_dataset(RunConfig()).x
        if self.kind == "binary":
            generator = torch.Generator().manual_seed(self.seed)
            p = 0.1 + 0.8 * torch.rand(self.dim, generator=generator)
            return (torch.rand(self.n, self.dim, generator=generator) < p).float()
        raise ValueError(f"unknown data kind {self.kind!r}")


@dataclass(frozen=True)
class Settings:
    """The command line shared by every benchmark: ``quick`` runs, torch threads per measured process, the time
    limit of one measured run, the rounds of ``repeats`` over a benchmark's variants, and the ``device``
    (``cpu`` or ``cuda``) that both vaeconverge and the naive loop train on."""

    quick: bool
    threads: int
    timeout_s: float
    repeats: int
    device: str = "cpu"


@dataclass(frozen=True)
class Variant:
    """One measured configuration: ``fn(*args)`` in a child process, returning :class:`Timed`."""

    label: str
    fn: Callable[..., Timed]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Timed:
    """What a measured function returns: seconds of training, optimizer steps (summed over replicas)."""

    seconds: float
    steps: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Measurement:
    """One variant measured in its own process; ``error`` says why it has no numbers."""

    variant: str
    seconds: float = math.nan
    steps: int = 0
    peak_rss_mib: float = math.nan
    extra: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.error is None and self.seconds > 0 else math.nan


@dataclass(frozen=True)
class Ratio:
    """A headline number of a benchmark: ``value`` (a factor, or a fraction shown in percent) against its target."""

    label: str
    value: float
    percent: bool = False
    target: str = ""
    met: bool | None = None

    def shown(self) -> str:
        if not math.isfinite(self.value):
            return "n/a"
        return f"{100 * self.value:.1f}%" if self.percent else f"{self.value:.2f}x"


@dataclass(frozen=True)
class Result:
    """A benchmark's measurements and ratios; ``skipped`` says why it could not run at all."""

    benchmark: str
    measurements: list[Measurement] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    skipped: str | None = None


# The MLP benchmarks' network and optimizer, pinned rather than the package's defaults: the naive loop's and
# Pythae's (ReLU, torch's Adam), so that comparisons are like for like, and what the README's numbers measured.
BASELINE_MLP = {"activation": "relu", "optimizer": "adam"}

FIRST_LAST = "diagnostics at first/last step"
QUICK = "quick: 5 checkpoints, no constants"
QUICK_DIAGNOSTICS = {"eval_points": 5, "constants": False}  # --quick's stand-in for the default diagnostics
# The default full-gradient diagnostics (checkpoints at the default interval, minibatch norms every step);
# the constants probes (L, sigma^2, R at three points) are a separate one-off cost, measured by benchmark 4.
DEFAULT = "default full-gradient diagnostics, no constants probes"
DEFAULT_DIAGNOSTICS = {"constants": False}


def first_last(steps: int) -> dict[str, Any]:
    """RunConfig options that reduce the diagnostics as far as the configuration allows: full-gradient
    checkpoints at the first and last step only (``FIRST_LAST``), no constants probes."""
    return {"eval_every": steps, "constants": False}


def time_vaeconverge(data: Data, options: dict[str, Any], warmup_steps: int) -> Timed:
    """``vaeconverge.engine.train(RunConfig(**options), data, progress=False)``, after an untimed warm-up run of
    ``warmup_steps`` steps with minimal diagnostics; steps are counted over all replicas (``seeds``). Extras: the
    number of checkpoints and the seconds the run's summary says its checkpoints and probes took."""
    from vaeconverge.config import RunConfig
    from vaeconverge.data import Dataset
    from vaeconverge.engine import train

    dataset = Dataset(data.kind, data.load())
    config = RunConfig(**options)
    if warmup_steps:
        warmup = dataclasses.replace(config, steps=warmup_steps, **first_last(warmup_steps))
        train(warmup, dataset, progress=False)
    start = time.perf_counter()
    result = train(config, dataset, progress=False)
    synchronize(config.device)
    seconds = time.perf_counter() - start
    replicas = len(options.get("seeds", ())) or 1
    spent = result.summary["diagnostics_seconds"]
    checkpoints = len({row["step"] for row in result.metrics})
    return Timed(seconds, config.steps * replicas, {"checkpoints": checkpoints, "checkpoints_s": spent["checkpoints"],
                                                     "probes_s": spent["probes"]})


def training_seconds(run: Measurement) -> float:
    """A run of :func:`time_vaeconverge`'s seconds less its checkpoints' and probes'."""
    return run.seconds - run.extra.get("checkpoints_s", 0.0) - run.extra.get("probes_s", 0.0)


def synchronize(device: str) -> None:
    """Wait for the work queued on a GPU, so that the clock stops after it (a no-op on the CPU)."""
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()


def speedup(label: str, candidate: Measurement, baseline: Measurement, minimum: float | None) -> Ratio:
    """Candidate's steps/s over the baseline's; met when at least ``minimum`` (no target if None)."""
    value = candidate.steps_per_s / baseline.steps_per_s
    target = "" if minimum is None else f">= {minimum:g}x"
    met = None if minimum is None or not math.isfinite(value) else value >= minimum
    return Ratio(label, value, target=target, met=met)


def against_baseline(name: str, baseline: Variant, ours: Callable[[str, dict[str, Any]], Variant],
                     versus: str, steps: int, settings: Settings, target: float,
                     also: Sequence[tuple[str, dict[str, Any]]] = ()) -> Result:
    """vaeconverge with its default diagnostics (``--quick``: 5 checkpoints) and, for information, with
    checkpoints at the first and last step only, and with each of the default's variations ``also`` (label,
    options), each against ``baseline``; ``ours(label, options)`` is the variant of vaeconverge with those
    options."""
    diagnostics = QUICK_DIAGNOSTICS if settings.quick else DEFAULT_DIAGNOSTICS
    variants = [baseline, ours(QUICK if settings.quick else DEFAULT, diagnostics), ours(FIRST_LAST, first_last(steps)),
                *(ours(label, diagnostics | options) for label, options in also)]
    baseline, default, *others = measure_all(variants, settings)
    return Result(name, [baseline, default, *others], [
        speedup(f"speed-up vs {versus}", default, baseline, target),
        *(speedup(f"speed-up vs {versus}, {label}", other, baseline, None)
          for label, other in zip([FIRST_LAST, *(label for label, _ in also)], others, strict=True)),
    ])


def measure_all(variants: Sequence[Variant], settings: Settings) -> list[Measurement]:
    """Every variant ``settings.repeats`` times, round-robin; each variant's fastest run (and its largest peak
    memory), or its first error."""
    runs: list[list[Measurement]] = [[] for _ in variants]
    for _ in range(settings.repeats):
        for variant, done in zip(variants, runs, strict=True):
            done.append(measure(variant.label, variant.fn, *variant.args, threads=settings.threads,
                                timeout_s=settings.timeout_s))
    return [_fastest(done) for done in runs]


def _fastest(runs: list[Measurement]) -> Measurement:
    failed = [m for m in runs if m.error is not None]
    if failed:
        return failed[0]
    best = min(runs, key=lambda m: m.seconds)
    return dataclasses.replace(best, peak_rss_mib=max(m.peak_rss_mib for m in runs))


def measure(variant: str, fn: Callable[..., Timed], *args: Any, threads: int, timeout_s: float) -> Measurement:
    """Run ``fn(*args)`` in a fresh spawned process with ``threads`` torch threads; its output is discarded."""
    context = mp.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, fn, args, threads), daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            process.kill()
            return Measurement(variant, error=f"timed out after {timeout_s:g} s")
        status, payload, peak = receive.recv()
    except EOFError:
        process.join()  # to read its exit code
        return Measurement(variant, error=f"child process died (exit code {process.exitcode})")
    finally:
        process.join()
        receive.close()
    if status == "error":
        return Measurement(variant, peak_rss_mib=peak, error=payload)
    return Measurement(variant, payload.seconds, payload.steps, peak, payload.extra)


def _child(send: Any, fn: Callable[..., Timed], args: tuple[Any, ...], threads: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)  # progress bars and logs of the trained libraries
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(threads)
    try:
        timed = fn(*args)
        if torch.cuda.is_initialized():  # the GPU's peak beside the host's
            gpu_peak = torch.cuda.max_memory_allocated() / 2**20
            timed = dataclasses.replace(timed, extra={**timed.extra, "GPU peak MiB": gpu_peak})
        status, payload = "ok", timed
    except Exception as error:  # reported in the table; the other variants still run
        status, payload = "error", f"{type(error).__name__}: {error}"
    send.send((status, payload, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    send.close()


def format_results(results: list[Result]) -> str:
    """The measurements of every benchmark, then one table of all ratios."""
    lines = [f"{'benchmark':<38} {'variant':<64} {'seconds':>8} {'steps':>7} {'steps/s':>9} {'peak MiB':>9}"]
    for result in results:
        name = result.benchmark
        if result.skipped:
            lines.append(f"{name:<38} skipped: {result.skipped}")
        for m in result.measurements:
            if m.error:
                lines.append(f"{name:<38} {m.variant:<64} could not run: {m.error}")
            else:
                extra = "  ".join(f"{key} {value:.3g}" for key, value in m.extra.items())
                lines.append(f"{name:<38} {m.variant:<64} {m.seconds:>8.2f} {m.steps:>7} {m.steps_per_s:>9.1f} "
                             f"{m.peak_rss_mib:>9.0f}  {extra}".rstrip())
            name = ""
    lines += ["", f"{'benchmark':<38} {'ratio':<64} {'value':>8} {'target':>9} {'met':>5}"]
    for result in results:
        name = result.benchmark
        if result.skipped:
            lines.append(f"{name:<38} skipped: {result.skipped}")
        for ratio in result.ratios:
            met = {True: "yes", False: "NO", None: "-"}[ratio.met]
            lines.append(f"{name:<38} {ratio.label:<64} {ratio.shown():>8} {ratio.target:>9} {met:>5}")
            name = ""
    return "\n".join(lines)


def parse_args(description: str, selectable: int = 0) -> argparse.Namespace:
    """``--quick``, ``--threads`` and ``--timeout``, shared by every benchmark script; with ``selectable``
    benchmarks, also ``--only`` (a comma-separated list of their numbers, from 1)."""
    # imported here, in the parent alone: the measured children stay without vaeconverge unless they use it
    from vaeconverge.runtime import DEVICES, ConfigError, resolve_device

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short runs that only check the benchmarks work")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads in every measured process (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds after which one measured variant is stopped (default: %(default)s)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where vaeconverge and the naive loop train (default: auto, a GPU where torch sees one)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds over each benchmark's variants, keeping each one's fastest (default: "
                             "%(default)s; 1 with --quick)")
    if selectable:
        parser.add_argument("--only", type=lambda text: [int(part) for part in text.split(",")],
                            default=list(range(1, selectable + 1)), help="benchmarks to run, e.g. 1,4")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        args.device = resolve_device(args.device).type
    except ConfigError as error:
        parser.error(str(error))
    if selectable and not all(1 <= number <= selectable for number in args.only):
        parser.error(f"--only takes numbers from 1 to {selectable}")
    return args


MATMUL_SIZE = 1024


def time_matmul(size: int, reps: int) -> Timed:
    """``reps`` products of two random size x size fp32 matrices, after a few untimed ones."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    seconds = time.perf_counter() - start
    return Timed(seconds, reps, {"GFLOP/s": 2 * size**3 * reps / seconds / 1e9})


def host(threads: int) -> str:
    """The CPU, the vector instructions torch's kernels use on it, and its fp32 matmul rate on ``threads``
    threads now: vaeconverge's stacked steps are bound by the matmul rate and a naive loop by per-operation
    overhead, so ratios between them move with the host."""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    except OSError:
        model = "?"
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rate = time_matmul(MATMUL_SIZE, 20).extra["GFLOP/s"]
    finally:
        torch.set_num_threads(before)
    return (f"{os.cpu_count()} CPUs ({model}, {torch.backends.cpu.get_cpu_capability()}), "
            f"{MATMUL_SIZE}x{MATMUL_SIZE} fp32 matmul at {rate:.0f} GFLOP/s on {threads} threads")


def gpu() -> str:
    """The GPU torch uses, its memory and the CUDA version torch was built with."""
    properties = torch.cuda.get_device_properties(0)
    return (f"GPU {properties.name} ({properties.total_memory / 2**30:.0f} GiB, {properties.multi_processor_count} "
            f"multiprocessors), CUDA {torch.version.cuda}")


def header(args: argparse.Namespace) -> str:
    mode = ("quick check (--quick), not a measurement" if args.quick
            else f"full measurement, fastest of {args.repeats} round-robin rounds")
    device = f"on {gpu()}" if args.device == "cuda" else "on the CPU"
    return (f"vaeconverge benchmarks: {mode}; torch {torch.__version__}, {args.threads} torch threads "
            f"(torch.set_num_threads) in every measured process, which vaeconverge's own choice "
            f"(engine/plan.py) then overrides; training {device}; {host(args.threads)}")


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(args.quick, args.threads, args.timeout, args.repeats, args.device)


def main(run: Callable[[Settings], Result], doc: str) -> None:
    """Command line of a single benchmark module (``doc``: its docstring): run it and print its table."""
    args = parse_args(doc.splitlines()[0])
    print(header(args), flush=True)
    print(format_results([run(settings_of(args))]))

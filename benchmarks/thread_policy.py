"""Benchmark 6: does the default thread choice hold on an idle machine and on a busy one?

Each workload is `vaeconverge train` as a user runs it, timed as a whole command (start-up included), with the
default threads, with `--threads 1` and with `--threads <cores>`, in three conditions: on the idle machine
(`idle`), beside one process that keeps a core busy (`while True: pass`) from before the command starts (`busy`),
and with that process arriving `--arrive` seconds after the command starts, once training has begun (`arrives`).
A variant's time is the fastest of `--repeats` rounds, the variants of a round run one after another. The ratio
printed is the best variant's time over the default's (1.00: the default is the best choice; the target is
>= 0.90 in every condition); beside the default's time, the threads it ran on (``2 1@120``: 2, then 1 from step
120 on).

Run: ``.venv/bin/python benchmarks/thread_policy.py [--quick] [--repeats N] [--conditions idle busy arrives]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from tempfile import TemporaryDirectory

CORES = len(os.sched_getaffinity(0))
WORKLOADS = {  # name: train's options (checkpoints at the first and last step only, no constants probes)
    "digits MLP, 1 seed": ["--steps", "1000"],
    "digits MLP, 8 seeds": ["--steps", "400", "--seeds", "8"],
    "784-512-16 MLP, 1 seed": ["--data", "synthetic-linear", "--likelihood", "gaussian", "--n-samples", "4096",
                               "--data-dim", "784", "--hidden", "512", "--latent-dim", "16", "--depth", "1",
                               "--batch-size", "256", "--steps", "60"],
}
VARIANTS = {
    "default": [],
    "--threads 1": ["--threads", "1"],
    f"--threads {CORES}": ["--threads", str(CORES)],
}


CONDITIONS = ("idle", "busy", "arrives")


@contextmanager
def busy_core(wait: float = 0.5) -> Iterator[None]:
    """A process that keeps a core busy for the duration of the block, started ``wait`` seconds before it."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(wait)
        yield
    finally:
        spinner.kill()
        spinner.wait()


def timed_train(options: list[str], out: Path, quick: bool, arrive: float | None = None) -> tuple[float, str]:
    """Seconds that one `vaeconverge train` command takes, start to end, and the threads it ran on (its summary's
    ``threads``, then each of its ``thread_changes`` as ``count@step``); with ``arrive``, a busy process starts
    that many seconds after the command and lasts until it ends."""
    steps = options.index("--steps") + 1
    options = [*options[:steps], str(max(20, int(options[steps]) // 10)) if quick else options[steps],
               *options[steps + 1:]]
    command = [sys.executable, "-m", "vaeconverge", "train", *options, "--eval-points", "2", "--no-constants",
               "--quiet", "--overwrite", "--out", str(out)]
    start = time.perf_counter()
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        if arrive is None:
            code = run.wait()
        else:
            try:
                code = run.wait(timeout=arrive)
            except subprocess.TimeoutExpired:
                with busy_core(wait=0.0):
                    code = run.wait()
    finally:
        run.kill()
        run.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise subprocess.CalledProcessError(code, command)
    summary = json.loads((out / "summary.json").read_text())
    return seconds, " ".join([str(summary["threads"]), *(f"{n}@{step}" for step, n in summary["thread_changes"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps: checks that it runs")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the variants (each keeps its fastest)")
    parser.add_argument("--conditions", nargs="*", choices=CONDITIONS, default=list(CONDITIONS),
                        help="idle machine; a busy process from the start; one arriving mid-run")
    parser.add_argument("--arrive", type=float, default=6.0,
                        help="seconds after the command starts at which the busy process of `arrives` starts")
    args = parser.parse_args()
    print(f"{CORES} cores; torch threads as vaeconverge chooses them unless the variant says; "
          f"{args.repeats} rounds, fastest kept; `arrives`: a busy process from {args.arrive:g} s on")
    rows = []
    with TemporaryDirectory() as tmp:
        for condition in args.conditions:
            with busy_core() if condition == "busy" else nullcontext():
                for workload, options in WORKLOADS.items():
                    best: dict[str, float] = {}
                    threads = ""  # those of the default's fastest round
                    for _ in range(args.repeats):
                        for variant, extra in VARIANTS.items():
                            seconds, ran_on = timed_train([*options, *extra], Path(tmp) / "run", args.quick,
                                                          args.arrive if condition == "arrives" else None)
                            if seconds < best.get(variant, float("inf")):
                                best[variant] = seconds
                                threads = ran_on if variant == "default" else threads
                    fastest = min(best, key=best.get)
                    rows.append((condition, workload, best, threads, best[fastest] / best["default"], fastest))
                    print(f"{condition}, {workload}: " + ", ".join(f"{v} {s:.1f} s" for v, s in best.items())
                          + f" (the default's threads: {threads}); best/default {rows[-1][4]:.2f} ({fastest})",
                          flush=True)
    print()
    print(f"| condition | workload | default (its threads) | `--threads 1` | `--threads {CORES}` | best / default |")
    print("|---|---|---|---|---|---|")
    for condition, workload, best, threads, ratio, fastest in rows:
        times = " | ".join(f"{seconds:.1f} s" for seconds in best.values())
        times = times.replace(" s", f" s ({threads})", 1)
        print(f"| {condition} | {workload} | {times} | **{ratio:.2f}** ({fastest}) |")


if __name__ == "__main__":
    main()

"""Regenerate the documentation's printouts and tables from real runs (``make docs``), so that they cannot go stale.

A generated block of a Markdown page sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; NAME is
one of :data:`BLOCKS`, a function that runs real commands in a scratch folder and returns the block's text.
``docs/cli.md`` is rendered whole from the command line's parser. ``--only NAME`` regenerates one block.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FIGURES = DOCS / "reproduce-quick"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.DOTALL)


def vaeconverge(*args: str, cwd: Path) -> str:
    """Run ``vaeconverge ARGS`` in ``cwd`` with this interpreter; its stdout, or an error with its stderr."""
    done = subprocess.run([sys.executable, "-m", "vaeconverge", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"vaeconverge {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def fenced(command: str, output: str) -> str:
    return f"```\n$ {command}\n{output.rstrip()}\n```\n"


FIRST_RUN = "train --data digits --steps 3000 --seeds 4 --out runs/first"
LINEAR_SGD = ("train --data synthetic-linear --model linear --likelihood gaussian --latent-dim 3 --optimizer sgd "
              "--lr 0.01 --schedule sqrt --batch-size {b} --steps 3000 --quiet --out {out}")
BBVI_RUN = ("bbvi --target linear-regression --family full-rank --samples 16 --batch-size 50 --optimizer sgd "
            "--lr 0.02 --schedule sqrt --steps 3000 --seeds 4 --quiet --out runs/bbvi-conjugate")


def first_run(scratch: Path) -> str:
    """The README's first command and what it prints."""
    return fenced(f"vaeconverge {FIRST_RUN}", vaeconverge(*FIRST_RUN.split(), "--quiet", cwd=scratch))


def bound_example(scratch: Path) -> str:
    """A Linear VAE trained by SGD at B = 4 and B = 8, held against the Ghadimi-Lan bound and compared."""
    for b, out in ((4, "runs/sgd"), (8, "runs/sgd-b8")):
        vaeconverge(*LINEAR_SGD.format(b=b, out=out).split(), cwd=scratch)
    command = "bound --from runs/sgd --compare runs/sgd-b8"
    return fenced(f"vaeconverge {LINEAR_SGD.format(b=4, out='runs/sgd')}\n$ vaeconverge "
                  f"{LINEAR_SGD.format(b=8, out='runs/sgd-b8')}\n$ vaeconverge {command}",
                  vaeconverge(*command.split(), cwd=scratch))


def bbvi_example(scratch: Path) -> str:
    """BBVI of the conjugate linear-regression posterior, whose exact answer is known, and how close it came."""
    printout = vaeconverge(*BBVI_RUN.split(), cwd=scratch)
    errors = json.loads((scratch / "runs" / "bbvi-conjugate" / "summary.json").read_text())["posterior"]
    mean = [e["mean_error"] for e in errors]
    cov = [e["covariance_error"] for e in errors]
    return (fenced(f"vaeconverge {BBVI_RUN}", printout)
            + f"\nAgainst the exact posterior (`summary.json`'s `posterior`, over the {len(errors)} seeds): the mean "
              f"within {min(mean):.2%} to {max(mean):.2%}, the covariance within {min(cov):.1%} to {max(cov):.1%} "
              "(relative errors; Frobenius norm for the covariance).\n")


def bbvi_sweep(scratch: Path) -> str:
    """The BBVI example study: its time, and each run's final ||grad L||^2 (seed mean) by family, optimizer, K, B."""
    from vaeconverge.report.findings import check, metric_of
    from vaeconverge.sweeps import Store
    from vaeconverge.sweeps.grid import load_spec

    spec_path = ROOT / "examples" / "bbvi-logistic.toml"
    start = time.perf_counter()
    vaeconverge("sweep", str(spec_path), "--store", "bbvi.db", "--jobs", "1", "--quiet", cwd=scratch)
    seconds = time.perf_counter() - start
    spec = load_spec(spec_path)
    with Store(scratch / "bbvi.db", readonly=True) as store:
        runs = list(store.runs(spec.name))
    columns = sorted({(r.config.samples, r.config.batch_size) for r in runs})
    rows = sorted({(r.config.family, r.config.optimizer) for r in runs})
    value = {(r.config.family, r.config.optimizer, r.config.samples, r.config.batch_size):
             r.summary["grad_sq_norm"] for r in runs}
    table = ["| family, optimizer | " + " | ".join(f"K={k}, B={b}" for k, b in columns) + " |",
             "|---|" + "---|" * len(columns)]
    table += [f"| {family}, {optimizer} | " + " | ".join(_value(value.get((family, optimizer, k, b)))
                                                          for k, b in columns) + " |" for family, optimizer in rows]
    verdict = check(spec.finding, [spec.label(r.config) for r in runs], [r.summary for r in runs])
    holding = sum(metric_of(r.summary, spec.finding.metric) is True for r in runs)
    return (f"{len(runs)} runs in {_minutes(seconds)} (`--jobs 1`, {date.today().isoformat()}, by `make docs`). "
            f"Final squared full-gradient norms (seed means):\n\n" + "\n".join(table)
            + f"\n\nThe stated finding ({spec.finding.statement[0].lower() + spec.finding.statement[1:-1]}): "
              f"**{verdict.word}**, with `{spec.finding.metric}` true in {holding} of {len(runs)} runs.\n")


def _reproduce(scratch: Path, *studies: str) -> float:
    """Seconds of ``reproduce --quick`` (of the named studies, else the default six) into scratch/quick."""
    named = [arg for name in studies for arg in ("--study", name)]
    start = time.perf_counter()
    vaeconverge("reproduce", "--quick", *named, "--quiet", "--out", "quick", cwd=scratch)
    return time.perf_counter() - start


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {round(seconds % 60)} s"


def _value(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _study_table(scratch: Path, names: set[str]) -> str:
    """Per study: its finding and the verdict (whose detail gives the measured metric per run), from the store."""
    from vaeconverge.report.findings import check
    from vaeconverge.sweeps import Store
    from vaeconverge.sweeps.grid import parse_spec

    rows = ["| study | finding checked | verdict, with what decided it |", "|---|---|---|"]
    with Store(scratch / "quick" / "results.db", readonly=True) as store:
        for name, text in store.sweeps():
            if name not in names:
                continue
            spec = parse_spec(text, name)
            runs = list(store.runs(name))
            verdict = check(spec.finding, [spec.label(run.config) for run in runs], [run.summary for run in runs])
            rows.append(f"| {name} | {_cell(spec.finding.statement)} | **{verdict.word}**: {_cell(verdict.detail)} |")
    return "\n".join(rows) + "\n"


def quick_studies(scratch: Path) -> str:
    """``reproduce --quick`` (what ``make demo`` runs): its time, the verdicts, and the figures copied to docs/."""
    from vaeconverge.sweeps.reproduce import paper_studies

    seconds = _reproduce(scratch)
    FIGURES.mkdir(exist_ok=True)
    for figure in (scratch / "quick").glob("*/*.png"):
        shutil.copyfile(figure, FIGURES / f"{figure.parent.name}-{figure.stem}.png")
    return (f"`vaeconverge reproduce --quick` took {_minutes(seconds)} here (the install not included; "
            f"{date.today().isoformat()}, by `make docs`). The verdicts of that run:\n\n"
            + _study_table(scratch, {spec.name for spec in paper_studies(quick=True)}))


def snr_studies(scratch: Path) -> str:
    """The two gradient-SNR studies at quick settings: their time and verdicts."""
    seconds = _reproduce(scratch, "snr", "snr-vr-iwae")
    return (f"`vaeconverge reproduce --quick --study snr --study snr-vr-iwae` took {_minutes(seconds)} here "
            f"({date.today().isoformat()}, by `make docs`):\n\n" + _study_table(scratch, {"snr", "snr-vr-iwae"}))


BLOCKS: dict[str, Callable[[Path], str]] = {
    "first-run": first_run,
    "bound-example": bound_example,
    "bbvi-example": bbvi_example,
    "bbvi-sweep": bbvi_sweep,
    "quick-studies": quick_studies,
    "snr-studies": snr_studies,
}


def fill(text: str, name: str, body: str) -> str:
    """``text`` with the block ``name`` replaced by ``body``; a KeyError if the text has no such block."""
    found = False

    def replace(match: re.Match[str]) -> str:
        nonlocal found
        if match["name"] != name:
            return match[0]
        found = True
        return match[1] + body + match[4]

    out = BLOCK.sub(replace, text)
    if not found:
        raise KeyError(name)
    return out


def block_names(text: str) -> list[str]:
    """The names of the generated blocks of a page."""
    return [match["name"] for match in BLOCK.finditer(text)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=[*BLOCKS, "cli"], action="append", help="regenerate only these")
    args = parser.parse_args()
    if not args.only or "cli" in args.only:
        from vaeconverge.cli.reference import write_cli_reference

        write_cli_reference(DOCS / "cli.md")
        print("docs/cli.md: from the parser")
    with tempfile.TemporaryDirectory(prefix="vaeconverge-docs-") as tmp:
        scratch = Path(tmp)
        for name, make in BLOCKS.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            body = make(scratch)
            pages = [page for page in PAGES if name in block_names(page.read_text())]
            for page in pages:
                page.write_text(fill(page.read_text(), name, body))
            print(f"{name}: {', '.join(p.relative_to(ROOT).as_posix() for p in pages)} "
                  f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

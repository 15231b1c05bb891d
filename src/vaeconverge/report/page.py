"""The report of a result store: per sweep, its figures and a table of its runs, and ``index.html`` holding
everything (figures embedded, readable offline). Built from the database alone, deterministically: the same
store gives the same bytes."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from ..sweeps.grid import SweepSpec, parse_spec
from ..sweeps.store import Store
from .findings import Verdict, check
from .snr import SLOPE_HEADER, plot_snr, slope_rows
from .study import StudyRun, plot_curves, plot_trend

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}
.agrees{color:#176b1e}.disagrees{color:#a11}.inconclusive{color:#777}"""


def write_report(store: Store, out_dir: str | Path) -> tuple[Path, dict[str, Verdict | None]]:
    """Write ``out_dir/<sweep>/curves.png``, ``trend.png`` (``snr.png`` for a gradient-SNR study) and
    ``out_dir/index.html``; return the page and each sweep's verdict on its finding (None for a sweep that states
    none)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections, verdicts = [], {}
    for name, text in store.sweeps():
        spec = parse_spec(text, f"sweep {name} in {store.path}")
        runs = [StudyRun(spec.label(run.config), run.status, store.metrics(run.id), run.summary)
                for run in store.runs(name)]
        folder = out / _slug(name)
        folder.mkdir(exist_ok=True)
        plot_curves(runs, folder / "curves.png", f"{name}: convergence along {', '.join(spec.axes) or 'the run'}")
        if _snr_study(spec):
            plot_snr([r.summary for r in runs], folder / "snr.png", spec.finding.statement)
        else:
            plot_trend(runs, spec.finding, folder / "trend.png", spec.finding.statement if spec.finding else name)
        verdict = check(spec.finding, [r.label for r in runs], [r.summary for r in runs]) if spec.finding else None
        verdicts[name] = verdict
        sections.append(_section(spec, runs, verdict, folder))
    page = out / "index.html"
    page.write_text("<!doctype html>\n<html><head><meta charset='utf-8'><title>vaeconverge report</title>"
                    f"<style>{_STYLE}</style></head><body>\n<h1>vaeconverge report</h1>\n"
                    f"<p>{len(sections)} studies from <code>{html.escape(store.path.name)}</code>.</p>\n"
                    + "\n".join(sections) + "\n</body></html>\n")
    return page, verdicts


def _section(spec: SweepSpec, runs: list[StudyRun], verdict: Verdict | None, folder: Path) -> str:
    parts = [f"<h2 id='{_slug(spec.name)}'>{html.escape(spec.name)}</h2>"]
    if spec.description:
        parts.append(f"<p>{html.escape(spec.description)}</p>")
    if spec.finding and verdict:
        parts.append(f"<p><b>Finding:</b> {html.escape(spec.finding.statement)}<br><b class='{verdict.word}'>"
                     f"The measured trend {verdict.word}</b>: {html.escape(verdict.detail)}</p>")
    for figure in ("curves.png", "snr.png" if _snr_study(spec) else "trend.png"):
        data = base64.b64encode((folder / figure).read_bytes()).decode()
        parts.append(f"<img alt='{spec.name} {figure}' src='data:image/png;base64,{data}'>")
    if _snr_study(spec):
        parts.append(_table(SLOPE_HEADER, slope_rows([run.summary for run in runs])))
    header = ("run", "status", "steps", "seeds", "final ||grad L||^2", "objective", "rate slope [interval]", "regime",
              "bound", "seconds")
    parts.append(_table(header, [_cells(run) for run in runs]))
    return "\n".join(parts)


def _snr_study(spec: SweepSpec) -> bool:
    """Whether the study's finding is the gradient-SNR scaling (its trend figure is snr.png, with a slope table)."""
    return spec.finding is not None and spec.finding.expect == "snr-scaling"


def _table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """An HTML table of ``rows`` of text cells under ``header``."""
    lines = ["<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    return "<table>" + "\n".join(lines) + "</table>"


def _cells(run: StudyRun) -> list[str]:
    s: dict[str, Any] = run.summary or {}
    rate = s.get("rate") or {}
    bound = s.get("bound") or {}
    low, high = rate.get("ci") or (None, None)
    interval = f" [{_number(low, '.2f')}, {_number(high, '.2f')}]" if _number(low) else ""
    slope = f"{_number(rate.get('slope'), '.2f')}{interval}"
    se = " (exact)" if s.get("grad_sq_norm_se") == 0 else f" ± {_number(s.get('grad_sq_norm_se'), '.2g')}"
    regime = (rate.get("regime") or "").split(" (")[0] + (" (collapsed)" if s.get("collapsed")
                                                           and rate.get("regime_name") != "collapsed" else "")
    holds = {True: "holds", False: "violated", None: "n/a"}[bound.get("holds")]
    bound_text = f"{_number(bound.get('value'), '.3g')} ({holds})" if bound.get("value") is not None else ""
    return [run.label, run.status, str(s.get("steps", "")), str(len(s.get("seeds", []))) if s else "",
            _number(s.get("grad_sq_norm")) + (se if _number(s.get("grad_sq_norm")) else ""),
            _number(s.get("objective")), slope, regime, bound_text, _number(s.get("seconds"), ".1f")]


def _number(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, int | float) and math.isfinite(value) else ""


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)

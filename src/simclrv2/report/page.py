"""The report page: the header, one block per section, and the command that rebuilds it.

Everything is written into ``RUN_DIR/report/`` (PNGs and ``index.html``, each atomically); the run itself is
only read. The page is self-contained apart from the PNGs beside it: inline CSS, no scripts, no web fonts.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from simclrv2.atomic import atomic_write_text
from simclrv2.errors import SimCLRv2Error
from simclrv2.report import plots
from simclrv2.report.collect import ReportData, collect
from simclrv2.report.sections import BUILDERS, FIGURES, Section, esc, header_facts

REPORT_DIR = "report"

CSS = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em} dl.facts dt{font-weight:600}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1.2em} dl.facts dd{margin:0}
figure img{max-width:100%;height:auto;border:1px solid #eee} figcaption{color:#555;font-size:.92em}
p.missing{background:#fff6e0;border-left:4px solid #e0a800;padding:.5em .8em} ul.notes{color:#8a5a00}
table.acc{border-collapse:collapse;margin:1em 0} table.acc thead th{background:#f3f3f3}
table.acc th,table.acc td{border:1px solid #ccc;padding:.3em .8em;text-align:right}
table.acc th[scope=row]{text-align:left} td.none{color:#999;text-align:center}
footer{margin-top:3em;color:#666;font-size:.9em} code{background:#f3f3f3;padding:.1em .3em}
"""


def _render(data: ReportData, sections: list[Section]) -> str:
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in header_facts(data))
    notes = ""
    if data.notes:
        items = "".join(f"<li>{esc(n)}</li>" for n in data.notes)
        notes = f"<h2>Left out</h2><ul class=\"notes\">{items}</ul>"
    parts = []
    for s in sections:
        parts.append(f"<h2>{esc(s.title)}</h2>")
        if s.missing:
            parts.append(f'<p class="missing">Not available: {esc(s.missing)}.</p>')
            continue
        if s.figure:
            parts.append(f'<figure><img src="{esc(s.figure)}" alt="{esc(s.title)}">'
                         f"<figcaption>{s.caption}</figcaption></figure>")
        parts.append(s.body)
    command = f"simclrv2 report {shlex.quote(str(data.run_dir))}"
    title = f"SimCLRv2 report: {data.run_dir.resolve().name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head>\n"
            f"<body><h1>{esc(title)}</h1><dl class=\"facts\">{facts}</dl>{notes}\n" + "\n".join(parts) +
            f"\n<footer>Rebuild this page with <code>{esc(command)}</code>.</footer></body></html>\n")


def build_report(run_dir: str | Path) -> Path:
    """Writes ``RUN_DIR/report/index.html`` and the PNGs it shows, for a pipeline directory (``summary.json``)
    or a single stage's run directory (``metrics.jsonl`` / ``result.json``); returns the path of the page.

    Sections whose data is absent say so instead of failing; nothing outside ``RUN_DIR/report/`` is written.
    """
    data = collect(run_dir)
    plots.require_matplotlib()
    out = data.run_dir / REPORT_DIR
    if out.exists() and not out.is_dir():
        raise SimCLRv2Error(f"{out} is a file; move it away so the report can be written there")
    out.mkdir(exist_ok=True)
    sections = [build(data, out) for build in BUILDERS]
    shown = {s.figure for s in sections if s.figure and not s.missing}
    for name in FIGURES:  # a figure from an earlier build whose data is gone would mislead
        if name not in shown:
            (out / name).unlink(missing_ok=True)
    atomic_write_text(out / "index.html", _render(data, sections))
    return out / "index.html"

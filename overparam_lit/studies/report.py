"""``overparam-lit report DIR``: one self-contained HTML page of every figure of a sweep folder.

Draws every figure that applies to the runs under ``DIR`` (and the sweep's own figure) into
``DIR/figures/``, then writes ``DIR/report.html``: the sweep's plan, each figure as an inline
picture with its numbers as tables, the table of fits and the results (one row per member). The
page needs no other file.

    overparam-lit report runs/dd [--out runs/dd/report.html] [--no-figures]
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import time
from pathlib import Path
from typing import Any

from overparam_lit.studies.figures import draw, figures_for
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.utils import ConfigError, atomic_write_text, check

__all__ = ["build_parser", "main", "write_report"]

STYLE = ("body{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em}"
         "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
         "figure{margin:0.5em 0}img{max-width:100%}figcaption{font-size:11px;color:#555}"
         "section{border-top:1px solid #ddd;margin-top:1em}")
MAX_ROWS = 400
"""Rows of results.csv shown on the page (the file holds all of them)."""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return html.escape(v)
        return f"{f:.4g}" if any(c in v for c in ".e") else html.escape(v)
    if isinstance(v, (list, dict)):
        return html.escape(json.dumps(v)[:200])
    return html.escape("" if v is None else str(v))


def table_html(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def numbers_html(data: dict[str, Any]) -> str:
    """A figure's numbers: scalars in one table, mappings of mappings and lists of mappings as
    tables of their own (one level of nesting; deeper values are shown as JSON)."""
    parts = []
    flat = [(k, v) for k, v in data.items() if not isinstance(v, (dict, list)) or
            (isinstance(v, list) and not any(isinstance(x, dict) for x in v))]
    if flat:
        parts.append(table_html(["key", "value"], [[k, v] for k, v in flat]))
    for key, value in data.items():
        rows: list[tuple[str, dict[str, Any]]] = []
        if isinstance(value, dict) and value and all(isinstance(x, dict) for x in value.values()):
            rows = [(str(k), x) for k, x in value.items()]
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            rows = [(str(i), x) for i, x in enumerate(value)]
        if not rows:
            continue
        cols = list(dict.fromkeys(c for _, x in rows for c in x))
        parts.append(f"<h4>{html.escape(key)}</h4>" + table_html([key, *cols], [[k, *[x.get(c) for c in cols]]
                                                                              for k, x in rows]))
    return "".join(parts)


def _picture(path: Path, root: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    try:
        caption = str(path.relative_to(root))
    except ValueError:
        caption = str(path)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _csv_table(path: Path, limit: int | None = None) -> str:
    if not path.is_file():
        return ""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return ""
    cols = [c for c in rows[0] if c not in ("command", "folder")]
    shown = rows if limit is None else rows[:limit]
    note = "" if len(shown) == len(rows) else f"<p>First {len(shown)} of {len(rows)} rows.</p>"
    return note + table_html(cols, [[r.get(c, "") for c in cols] for r in shown])


def write_report(source: str | Path, out: str | Path | None = None, draw_figures: bool = True) -> Path:
    """Draw the figures of ``source`` and write the HTML page (see the module docstring)."""
    sweep = SweepFolder(source)
    check(sweep.root.is_dir(), "sweep folder not found", str(sweep.root),
          "Give the --out folder of `overparam-lit sweep` (or a folder of runs).")
    spec = sweep.read_spec()
    names = figures_for(sweep.root)
    if spec.get("figure") and spec["figure"] not in names:
        names.insert(0, spec["figure"])
    sections, notes = [], []
    for name in names:
        png = sweep.figure(name.replace("-", "_"))
        try:
            if draw_figures:
                numbers = draw(name, sweep.root, png)
            else:
                numbers = json.loads(png.with_suffix(".json").read_text())
        except (ConfigError, OSError, ValueError) as err:
            notes.append(f"{name}: not drawn ({err})")
            continue
        pictures = [png, *sorted(png.parent.glob(png.stem + "_*.png"))]
        body = "".join(_picture(p, sweep.root) for p in pictures if p.is_file())
        sections.append(f"<section><h2>{html.escape(name)}</h2>{body}{numbers_html(numbers)}</section>")
    title = html.escape(sweep.root.name)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>",
             f"<style>{STYLE}</style></head><body><h1>{title}</h1>"]
    if spec:
        fixed = " ".join(spec.get("options", {}).get("set") or []) or "none"
        parts.append(f"<p>Sweep <b>{html.escape(str(spec.get('name')))}</b>: configs "
                     f"{html.escape(', '.join(spec.get('configs', [])))}; stages "
                     f"{html.escape(', '.join(spec.get('stages', [])))}; {len(spec.get('fits', []))} fits; "
                     f"fixed arguments {html.escape(fixed)}.</p>")
    parts.append(f"<p>Generated {time.strftime('%Y-%m-%d %H:%M')} from "
                 f"<code>{html.escape(str(sweep.root))}</code>.</p>")
    parts += sections
    if sweep.fits.is_file():
        parts.append("<section><h2>Fits</h2>" + _csv_table(sweep.fits) + "</section>")
    if sweep.results.is_file():
        parts.append("<section><h2>Results (one row per member)</h2>" + _csv_table(sweep.results, MAX_ROWS)
                     + "</section>")
    if notes:
        parts.append("<section><h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                     + "</ul></section>")
    page = "".join(parts) + "</body></html>"
    path = Path(out) if out is not None else sweep.report
    return atomic_write_text(page, path)


def build_parser() -> argparse.ArgumentParser:
    """The ``overparam-lit report`` argument parser."""
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="overparam-lit report", description=doc.split("\n\n")[0],
                                epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="sweep folder (or any folder of runs)")
    p.add_argument("--out", type=Path, help="HTML file (default: SOURCE/report.html)")
    p.add_argument("--no-figures", action="store_true", help="use the figures already drawn, draw nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write the report and print where it is."""
    args = build_parser().parse_args(argv)
    path = write_report(args.source, args.out, not args.no_figures)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0

"""One self-contained HTML page of every figure and table of a sweep folder.

Draws the figures the folder's runs support (double descent from ``results.csv`` with a width
column, lottery curves from IMP / ticket runs, Hessian spectra from ``hessian/``, decision
regions from ``regions/``) into ``SWEEP/figures/``, then writes ``SWEEP/report.html`` with every
PNG at the top of the folder and in ``figures/`` embedded as base64, the results table and the
figures' JSON summaries as tables. The page needs no other file.

    python scripts/report.py runs/dd [--out runs/dd/report.html] [--no-figures]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import html
import importlib.util
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from overparam_lit.studies import RESULTS_FILE, require_dir  # noqa: E402
from overparam_lit.utils import ConfigError  # noqa: E402

MAIN_COLUMNS = ("status", "train/acc", "train/acc_noisy_memorized", "val/acc", "val/acc_noisy",
                "test/acc", "test/acc_noisy", "model/num_params", "epoch", "seconds", "attempts")


def _script(name: str) -> Any:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_overparam_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def draw_figures(sweep: Path) -> list[str]:
    """Run the plot scripts that apply to ``sweep``; returns one line per script outcome."""
    figs = sweep / "figures"
    figs.mkdir(exist_ok=True)
    jobs = []
    if (sweep / RESULTS_FILE).is_file():
        jobs.append(("plot_double_descent", [str(sweep), "--out", str(figs / "double_descent")]))
    if any(sweep.rglob("imp/summary.json")) or any(sweep.rglob("imp/ticket_result.json")) \
            or any(sweep.rglob("lottery_science.json")):
        jobs.append(("plot_lottery", [str(sweep), "--out", str(figs / "lottery")]))
    if any(sweep.rglob("hessian/probe_step*.npz")):
        jobs.append(("plot_spectra", [str(sweep), "--out", str(figs / "spectra")]))
    if any(sweep.rglob("regions/history.json")):
        jobs.append(("plot_regions", [str(sweep), "--out", str(figs / "regions_summary")]))
    notes = []
    for name, argv in jobs:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = _script(name).main(argv)
        notes.append(f"{name}: " + ("ok" if rc == 0 else err.getvalue().strip()))
    return notes


def table_html(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        try:
            f = float(v)
            return f"{f:.4g}" if "." in str(v) or "e" in str(v) else html.escape(str(v))
        except (TypeError, ValueError):
            return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def results_table(sweep: Path) -> str:
    path = sweep / RESULTS_FILE
    if not path.is_file():
        return ""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return ""
    spec = sweep / "sweep.json"
    grid = list(json.loads(spec.read_text())["grid"]) if spec.is_file() else []
    cols = ["point", *[g for g in grid if g in rows[0]], *[c for c in MAIN_COLUMNS if c in rows[0]]]
    body = table_html(cols, [[r.get(c, "") for c in cols] for r in rows])
    return (f"<h2>Results ({len(rows)} points)</h2><p>Final value of each metric (last logged); "
            f"the full table is <code>{RESULTS_FILE}</code>.</p>" + body)


def json_tables(folder: Path) -> str:
    parts = []
    for f in sorted(folder.glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        flat = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) or v is None}
        nested = {k: v for k, v in data.items() if isinstance(v, dict) and v
                  and all(isinstance(x, dict) for x in v.values())}
        if flat:
            parts.append(f"<h3>{html.escape(f.name)}</h3>" + table_html(["key", "value"], list(flat.items())))
        for key, sub in nested.items():
            inner = sorted({k for x in sub.values() for k, v in x.items() if not isinstance(v, (dict, list))})
            if inner:
                parts.append(f"<h3>{html.escape(f.name)}: {html.escape(key)}</h3>"
                             + table_html([key, *inner], [[k, *[x.get(i, "") for i in inner]]
                                                           for k, x in sub.items()]))
            else:  # two levels of keys (e.g. mode -> density -> stats)
                for name, x in sub.items():
                    cols = sorted({k for v in x.values() if isinstance(v, dict) for k in v})
                    if cols:
                        parts.append(f"<h3>{html.escape(f.name)}: {html.escape(str(name))}</h3>"
                                     + table_html([key, *cols], [[k, *[v.get(c, "") for c in cols]]
                                                                 for k, v in x.items()]))
    return "".join(parts)


def figures_html(folders: list[Path]) -> str:
    """Every PNG of ``folders`` as an inline image; a name seen in a later folder (the freshly
    drawn ``figures/``) replaces the same name in an earlier one."""
    chosen: dict[str, Path] = {}
    for folder in folders:
        for png in sorted(folder.glob("*.png")):
            chosen[png.name] = png
    parts = []
    for png in chosen.values():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(png.name)}">'
                     f"<figcaption>{html.escape(str(png.relative_to(folders[0])))}</figcaption></figure>")
    return "".join(parts)


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
         "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
         "figure{display:inline-block;margin:0.5em}img{max-width:100%}figcaption{font-size:11px;color:#555}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="sweep folder (or any folder of runs)")
    p.add_argument("--out", type=Path, help="HTML file (default: SWEEP/report.html)")
    p.add_argument("--no-figures", action="store_true", help="embed existing PNGs only, draw nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep = require_dir(args.sweep, "sweep folder",
                            [RESULTS_FILE, "*.png", "*.json", "**/metrics.csv", "**/lottery_science.json"])
    except ConfigError as err:
        print(f"report.py: error: {err}", file=sys.stderr)
        return 2
    notes = [] if args.no_figures else draw_figures(sweep)
    folders = [sweep, sweep / "figures"]
    spec = sweep / "sweep.json"
    intro = ""
    if spec.is_file():
        s = json.loads(spec.read_text())
        intro = (f"<p>Sweep <b>{html.escape(s['name'])}</b>: configs {html.escape(', '.join(s['configs']))}; "
                 f"grid " + html.escape("; ".join(f"{k} = {', '.join(v)}" for k, v in s["grid"].items()))
                 + (f"; fixed {html.escape(' '.join(s['fixed']))}" if s.get("fixed") else "") + "</p>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(sweep.name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(sweep.name)}</h1>{intro}"
            f"<p>Generated {time.strftime('%Y-%m-%d %H:%M')} from <code>{html.escape(str(sweep))}</code>.</p>"
            + "<h2>Figures</h2>" + figures_html([f for f in folders if f.is_dir()])
            + results_table(sweep)
            + "<h2>Summaries</h2>" + "".join(json_tables(f) for f in folders if f.is_dir())
            + ("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
               if notes else "")
            + "</body></html>")
    out = args.out or sweep / "report.html"
    out.write_text(page)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The report page: reads a sweep folder (refusing bad input before anything is written), draws
its figures and writes one self-contained HTML file (see :mod:`overparam_lit.studies.report`)."""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from pathlib import Path
from typing import Any

from overparam_lit.studies.figures import FIGURES, draw, figures_for
from overparam_lit.studies.report.captions import caption, key_table
from overparam_lit.studies.report.numbers import _number, fmt, numbers_html, pct, table_html
from overparam_lit.studies.report.setup_section import _shown, reproduce_commands, setup_html
from overparam_lit.studies.results import RESULT_COLUMNS, read_csv_rows
from overparam_lit.studies.runs import SweepFolder, run_folders
from overparam_lit.utils import ConfigError, atomic_write_text, check, check_out_file

STYLE = """
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#dadce0;--bg:#fff;--soft:#f6f8fa;--accent:#b3261e}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
 background:var(--bg);max-width:60rem;margin:0 auto;padding:1.5rem 1.25rem 3rem}
h1{font-size:1.7rem;line-height:1.25;margin:0 0 .3rem}
h2{font-size:1.25rem;margin:2rem 0 .6rem;padding-top:.6rem;border-top:1px solid var(--line)}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
p{margin:.5rem 0}
.sub{color:var(--muted);margin:0 0 1rem}
code,pre{font:.85em/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
code{overflow-wrap:anywhere}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:.6rem .8rem;
 white-space:pre-wrap;overflow-wrap:anywhere;margin:.5rem 0}
figure{margin:1rem 0}
img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{margin-top:.5rem;color:var(--fg);font-size:.95rem}
figcaption b{font-weight:600}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.5rem 0;max-width:100%}
table{border-collapse:collapse;font-size:.9rem;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .6rem;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--soft);font-weight:600;vertical-align:bottom;white-space:normal;min-width:4em}
td:first-child,th:first-child{text-align:left}
tr.mark td{background:#fdecea}
.note{color:var(--muted);font-size:.9rem}
details{margin:.6rem 0;border:1px solid var(--line);border-radius:6px;padding:.3rem .8rem}
summary{cursor:pointer;font-weight:600;padding:.2rem 0}
details table{font-size:.8rem}
footer{margin-top:2.5rem;color:var(--muted);font-size:.85rem;border-top:1px solid var(--line);
 padding-top:.6rem}
@media (max-width:40rem){body{font-size:15px;padding:1rem .75rem 2rem}h1{font-size:1.35rem}
 th,td{padding:.25rem .4rem}}
"""
MAX_ROWS = 400
"""Rows of results.csv shown on the page (the file holds all of them)."""


def _read_results(sweep: SweepFolder, spec: dict[str, Any]) -> list[dict[str, str]] | None:
    """The rows of ``results.csv`` as text (``None`` when there is none), or a ConfigError when the
    file is not the table ``overparam-lit sweep`` writes."""
    path = sweep.results
    if not path.exists():
        return None
    configs = " ".join(f"-c {_shown(c)}" for c in spec.get("configs") or []) or "-c CONFIG"
    fix = (f"Rewrite it from the fits' folders with `overparam-lit sweep {configs} "
           f"--out {_shown(sweep.root)} --collect`.")
    return read_csv_rows(path, "results.csv", fix, RESULT_COLUMNS)


def _check_out(path: Path) -> None:
    check_out_file(path, "Give --out a file in an existing folder you can write to (the default is "
                   "SOURCE/report.html).")


def _run_config(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    """The resolved ``config.yaml`` of the first fit that has one (``{}`` when none)."""
    from overparam_lit.runfolder import RunFolder

    folders = [Path(f["folder"]) for f in spec.get("fits", []) if isinstance(f, dict) and f.get("folder")]
    for folder in [*folders, *run_folders(root)]:
        cfg = RunFolder(folder).read_config()
        if cfg:
            return cfg
    return {}


def _generic_table(rows: list[dict[str, str]]) -> str:
    """Key results of a sweep without a figure table: mean over seeds per width (and per grid value)."""
    done = [r for r in rows if r.get("status") == "done"]
    if not done:
        return ""
    skip = {"stage", "fit", "member", "seed", "seed_everything", "status", "attempts", "seconds", "epoch",
            "step", "num_params", "command", "folder"}
    metrics = [k for k in done[0] if "/" in k]
    keys = [k for k in done[0] if k not in skip and k not in metrics and "/" not in k
            and len({r.get(k) for r in done}) > 1 and not k.endswith("init_args.width")]
    groups: dict[tuple[Any, ...], list[dict[str, str]]] = {}
    for r in done:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    candidates = ("train/acc", "test/acc", "test/acc_noisy", "val/acc", "train/loss", "test/loss", "val/loss")
    shown = [m for m in candidates
             if m in metrics and any(_number(r.get(m)) is not None for r in done)][:5]
    body = []
    for key, members in sorted(groups.items(), key=lambda kv: [(_number(x) or 0, str(x)) for x in kv[0]]):
        params = [_number(m.get("num_params")) for m in members if _number(m.get("num_params")) is not None]
        line = [*(fmt(k) for k in key), str(len(members)),
                fmt(round(sum(params) / len(params))) if params else ""]
        for m in shown:
            vals = [_number(r.get(m)) for r in members if _number(r.get(m)) is not None]
            mean = sum(vals) / len(vals) if vals else None
            line.append(pct(mean) if m.endswith("acc") or "/acc_" in m else fmt(mean))
        body.append(line)
    return table_html([*keys, "Members", "Parameters", *shown], body, ident="key-results", formatted=True)


def _member_table(rows: list[dict[str, str]]) -> str:
    cols = [c for c in rows[0] if c not in ("command", "folder")] if rows else []
    duplicate = {"model.init_args.width": "width", "seed_everything": "seed"}
    cols = [c for c in cols if not (c in duplicate and all(r.get(c) == r.get(duplicate[c]) for r in rows))]
    same = [c for c in cols if len({r.get(c) for r in rows}) == 1 and len(rows) > 1]
    varying = [c for c in cols if c not in same]
    shown = rows[:MAX_ROWS]
    constants = ", ".join(f"{c} {fmt(rows[0].get(c))}" for c in same)
    note = f"<p class='note'>Same in every row: {html.escape(constants)}.</p>" if same else ""
    if len(shown) < len(rows):
        note += f"<p class='note'>First {len(shown):,} of {len(rows):,} rows (results.csv holds all).</p>"
    return note + table_html(varying, [[r.get(c, "") for c in varying] for r in shown])


def _picture(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _page_title(spec: dict[str, Any], root: Path, names: list[str], describe_text: str) -> str:
    main_figure = spec.get("figure") or (names[0] if names else None)
    title = ""
    if main_figure in FIGURES:
        title = str(FIGURES[main_figure].options.get("title") or FIGURES[main_figure].help)
    if not title:
        title = f"Sweep {spec.get('name') or root.resolve().name}"
    return f"{title}: {describe_text}" if describe_text else title


def write_report(source: str | Path, out: str | Path | None = None, draw_figures: bool = True) -> Path:
    """Draw the figures of ``source`` and write the HTML page (see the module docstring). Bad input
    (no sweep or runs, unreadable ``sweep.json`` or ``results.csv``, an unwritable ``out``) raises
    :class:`ConfigError` before anything is written."""
    from overparam_lit.runfolder import RunFolder
    from overparam_lit.studies.figures.common import describe

    sweep = SweepFolder(source)
    root = sweep.root
    check(root.is_dir(), "sweep folder not found", str(root),
          "Give the --out folder of `overparam-lit sweep` (or a folder of runs).")
    path = Path(out) if out is not None else sweep.report
    _check_out(path)
    spec = sweep.read_spec()
    rows = _read_results(sweep, spec)
    names = figures_for(root)
    if spec.get("figure") and spec["figure"] not in names:
        names.insert(0, spec["figure"])
    done = [r for r in rows or [] if r.get("status") == "done"]
    if not spec and rows is None:
        is_run = RunFolder(root).config_yaml.is_file() or RunFolder(root).metrics_csv.is_file()
        if is_run and not names:
            raise ConfigError(
                f"{_shown(root)} is the run folder of one `overparam-lit fit`, not a sweep folder, and "
                f"none of the report's figures applies to it (got {str(root)!r}). `overparam-lit report` "
                "reads the --out folder of `overparam-lit sweep`; for one run use `overparam-lit plot "
                f"FIGURE RUN` ({', '.join(FIGURES)}), or its metrics.csv.")
        check(bool(names), "the folder holds no sweep (no sweep.json or results.csv) and no run folders with "
              "a figure to draw", str(root),
              "Give the --out folder of `overparam-lit sweep -c configs/study_*.yaml --out DIR` once it "
              "has run.")
    if spec and rows is None:
        raise ConfigError(f"the sweep has no results.csv yet, so there is nothing to report "
                          f"(got {str(root)!r}). Run it first: `{reproduce_commands(spec, root, [])[0]}`.")

    sections, notes, figure_numbers = [], [], {}
    for name in names:
        png = sweep.figure(name.replace("-", "_"))
        try:
            if draw_figures:
                numbers = draw(name, root, png)
            else:
                numbers = json.loads(png.with_suffix(".json").read_text())
        except (ConfigError, OSError, ValueError) as err:
            notes.append(f"{name}: not drawn ({err})")
            continue
        figure_numbers[name] = numbers
        pictures = [png, *sorted(png.parent.glob(png.stem + "_*.png"))]
        title = str(FIGURES[name].options.get("title") or name) if name in FIGURES else name
        imgs = "".join(_picture(p, f"{title} ({p.name})") for p in pictures if p.is_file())
        table = key_table(name, numbers) if name != (spec.get("figure") or names[0]) else ""
        sections.append(
            f"<section id='{html.escape(name)}'><h2>{html.escape(title)}</h2>"
            f"<figure>{imgs}<figcaption>{caption(name, numbers)}</figcaption></figure>{table}"
            f"<details><summary>All numbers of this figure "
            f"(<code>overparam-lit plot {html.escape(name)}</code>)</summary>{numbers_html(numbers)}"
            "</details></section>")
    if not figure_numbers and not done:
        raise ConfigError("nothing to report: no finished fit and no figure could be drawn "
                          f"(got {str(root)!r}): "
                          + "; ".join(notes or ["results.csv has no finished rows"])
                          + ". Let `overparam-lit sweep` finish (rerun it to resume), then report.")

    main_figure = (spec.get("figure") if spec.get("figure") in figure_numbers
                   else next(iter(figure_numbers), None))
    try:
        describe_text = describe(root)
    except (ConfigError, OSError, ValueError):
        describe_text = ""
    title = _page_title(spec, root, list(figure_numbers) or names, describe_text)
    cfg = _run_config(spec, root)
    when = time.strftime("%Y-%m-%d %H:%M")
    members = len(done)
    sub = [f"Sweep <b>{html.escape(str(spec.get('name')))}</b>" if spec.get("name") else
           f"Runs under <code>{html.escape(_shown(root))}</code>"]
    if members:
        sub.append(f"{members:,} member{'s' if members != 1 else ''}")
    sub.append(f"written {when}")
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<header><h1>{html.escape(title)}</h1><p class='sub'>{' · '.join(sub)}</p></header>",
             "<section id='setup'><h2>Setup</h2>"
             + setup_html(spec, cfg, rows, root, list(figure_numbers)) + "</section>"]
    key = key_table(main_figure, figure_numbers[main_figure], ident="key-results") if main_figure else ""
    if not key and rows:
        key = _generic_table(rows)
    if key:
        lead = (f"<p>The numbers of the figure <a href='#{html.escape(main_figure)}'>below</a>.</p>"
                if main_figure else "<p>Mean over the members of each setting.</p>")
        note = ("<p class='note'>Errors are means over seeds; the highlighted row is the test-error peak.</p>"
                if main_figure == "double-descent" else "")
        parts.append(f"<section id='results'><h2>Key results</h2>{lead}{key}{note}</section>")
    parts += sections
    if sweep.fits.is_file() or rows:
        parts.append("<section id='members'><h2>Fits and members</h2>")
        if sweep.fits.is_file():
            fits = _read_fits(sweep.fits)
            if fits:
                parts.append(f"<details><summary>Fits ({len(fits):,})</summary>{_member_table(fits)}"
                             "</details>")
        if rows:
            parts.append("<details id='member-rows'><summary>Results (one row per member), "
                         f"{len(rows):,} rows</summary>{_member_table(rows)}</details>")
        parts.append("</section>")
    if notes:
        parts.append("<section id='notes'><h2>Notes</h2><ul>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul></section>")
    parts.append(f"<footer>Written by <code>overparam-lit report</code> on {when} from "
                 f"<code>{html.escape(_shown(root))}</code>.</footer></body></html>")
    try:
        return atomic_write_text("".join(parts), path)
    except OSError as err:
        raise ConfigError(f"the report could not be written: {err.strerror} (got {str(path)!r}). "
                          "Give --out a file in a folder you can write to.") from None


def _read_fits(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []

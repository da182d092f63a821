"""``overparam-lit report DIR``: one self-contained HTML page of a sweep, to read and to share.

Draws every figure that applies to the runs under ``DIR`` (and the sweep's own figure) into
``DIR/figures/``, then writes ``DIR/report.html``: a title and a setup paragraph taken from the
study config (data, label noise, model, widths, seeds, optimizer, epochs, and the commands that
reproduce the page), the study's key results as a table, each figure with a caption that states
its finding in numbers, and the fits and members folded away. Pictures are embedded, so the page
needs no other file and no network; it reads well on a laptop and on a phone.

    overparam-lit report runs/dd [--out runs/dd/report.html] [--no-figures]
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overparam_lit.studies.figures import FIGURES, draw, figures_for
from overparam_lit.studies.figures.common import num
from overparam_lit.studies.results import RESULT_COLUMNS, read_csv_rows
from overparam_lit.studies.runs import SweepFolder, run_folders
from overparam_lit.utils import ConfigError, atomic_write_text, check, check_out_file

__all__ = ["build_parser", "caption", "fmt", "main", "pct", "write_report"]

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

# ---- numbers ------------------------------------------------------------------------------
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` (booleans too: a flag is not a number on the page)."""
    return None if isinstance(value, bool) else num(value)


def fmt(value: Any) -> str:
    """A number for people: counts with thousands separators (``14,218``), other numbers to 3
    significant digits without trailing zeros (``0.544``, ``2.29``, ``0.01``, ``1,420``), very small
    or large ones as ``7.55 × 10⁻⁴``; text is returned as it is and a missing value as an empty
    string."""
    if value is None:
        return ""
    if isinstance(value, str):
        x = _number(value)
        if x is None:
            return value
        value = int(x) if x.is_integer() and not any(c in value for c in ".eE") else x
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    x = _number(value)
    if x is None:
        return "" if isinstance(value, float) else str(value)
    if x == 0:
        return "0"
    exp = math.floor(math.log10(abs(x)))
    if -3 <= exp < 6:
        text = f"{x:,.{max(0, 2 - exp)}f}"
        rounded = float(text.replace(",", ""))
        if rounded != 0 and math.floor(math.log10(abs(rounded))) > exp:  # 9.996 -> 10.0: one digit fewer
            text = f"{x:,.{max(0, 1 - exp)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa = x / 10.0 ** exp
    if round(abs(mantissa), 2) >= 10:
        mantissa, exp = mantissa / 10, exp + 1
    return f"{mantissa:.3g} × 10{str(exp).translate(_SUPERSCRIPT)}"


def pct(value: Any) -> str:
    """A fraction as a percentage to 3 significant digits (``0.544`` -> ``54.4%``; 0 and 1 exactly
    as ``0%`` and ``100%``); empty when missing."""
    x = _number(value)
    if x is None:
        return ""
    if x in (0.0, 1.0):
        return f"{x:.0%}"
    return fmt(100 * x) + "%"


def _width(value: Any) -> str:
    x = _number(value)
    return fmt(int(x)) if x is not None and x.is_integer() else fmt(value)


def _cell(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value)[:200])
    return html.escape(fmt(value))


def table_html(header: list[str], rows: list[list[Any]], marks: set[int] = frozenset(),
               ident: str | None = None, formatted: bool = False) -> str:
    """An HTML table in a horizontally scrolling box (it never widens the page). Cells are
    formatted with :func:`fmt` unless ``formatted`` (then they are escaped text); rows whose
    index is in ``marks`` are highlighted."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td>{html.escape(str(v)) if formatted else _cell(v)}</td>" for v in row)
        body.append(f"<tr class='mark'>{cells}</tr>" if i in marks else f"<tr>{cells}</tr>")
    attr = f" id='{ident}'" if ident else ""
    return (f"<div class='scroll'><table{attr}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def numbers_html(data: dict[str, Any]) -> str:
    """A figure's numbers: scalars in one table, mappings of mappings and lists of mappings as
    tables of their own (one level of nesting; deeper values are shown as JSON)."""
    parts = []
    flat = [(k, v) for k, v in data.items() if k not in ("figure", "planes_figure") and (
        not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(isinstance(x, dict) for x in v)))]
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


# ---- captions and key tables of each figure ----------------------------------------------
Table = tuple[list[str], list[list[str]], set[int]]


def _by_width(per_width: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    return sorted(((float(k), v) for k, v in per_width.items()), key=lambda kv: kv[0])


def _seeds(count: Any) -> str:
    return "One seed" if count == 1 else f"Mean of {count} seeds"


def _dd_caption(n: dict[str, Any]) -> str:
    widths = _by_width(n["per_width"])
    split = "test" if n.get("test_split", "test") == "test" else "validation"
    first_w, first = widths[0]
    peak_w, peak = n["peak_width"], n["peak_test_error"]
    thr, interp = n.get("threshold", 0.01), n.get("interpolation_width")
    if peak_w == first_w:
        text = (f"Clean {split} error is highest at the narrowest width ({pct(peak)} at width "
                f"{_width(peak_w)}) and shows no second peak in this range of widths")
    else:
        text = (f"Clean {split} error peaks at <b>{pct(peak)}</b> at width <b>{_width(peak_w)}</b>, after a "
                f"minimum of {pct(n['min_before_peak_test_error'])} at width "
                f"{_width(n['min_before_peak_width'])}")
    if interp is not None:
        where = ("the same width" if interp == peak_w else f"width <b>{_width(interp)}</b>")
        text += (f"; the training error first falls to {pct(thr) if thr else '0'} or below at {where} "
                 f"(the interpolation threshold)")
    else:
        lowest_w, lowest = min(((w, v.get("train_error", math.inf)) for w, v in widths), key=lambda t: t[1])
        text += (f"; no width fits the training labels (lowest training error {pct(lowest)} at width "
                 f"{_width(lowest_w)})")
    text += (f". At the widest net (width {_width(n['last_width'])}) the clean {split} error is "
             f"{pct(n['last_width_test_error'])}")
    last = widths[-1][1]
    if last.get("test_error_noisy") is not None:
        text += f" ({pct(last['test_error_noisy'])} against the noisy labels)"
    return text + f". {_seeds(n.get('seeds', 1))} per width; the band spans the seeds."


def _dd_table(n: dict[str, Any]) -> Table:
    header = ["Width", "Parameters", "Seeds", "Train error", "Test error (clean)", "Test error (noisy)"]
    rows, marks = [], set()
    for i, (w, v) in enumerate(_by_width(n["per_width"])):
        params = _number(v.get("num_params"))
        rows.append([_width(w), fmt(round(params)) if params is not None else "", str(v.get("seeds", "")),
                     pct(v.get("train_error")), pct(v.get("test_error")), pct(v.get("test_error_noisy"))])
        if w == n.get("peak_width"):
            marks.add(i)
    return header, rows, marks


def _lottery_caption(n: dict[str, Any]) -> str:
    metric = n.get("metric", "test/acc")
    dense = (n.get("dense") or {}).get("final")
    comparison = n.get("comparison") or []
    tickets = {float(k): v["mean"] for k, v in (n.get("final") or {}).get("ticket", {}).items()}
    parts = []
    if tickets:
        sparsest = min(tickets)
        parts.append(f"The sparsest IMP ticket (density {pct(sparsest)}) reaches {metric} "
                     f"<b>{pct(tickets[sparsest])}</b> at the end of training"
                     + (f", against {pct(dense)} for the dense net" if dense is not None else ""))
    if comparison:
        row = min(comparison, key=lambda r: r["density"])
        controls = [f"{k.replace('_', ' ')} {pct(v)}" for k, v in row.items()
                    if k not in ("density", "level", "ticket") and v is not None]
        if controls:
            parts.append(f"at density {pct(row['density'])} (level {row.get('level')}) its controls reach "
                         + ", ".join(controls))
    text = "; ".join(parts) or "IMP tickets and controls against density"
    return text + f". {_seeds(n.get('seeds', 1))}."


def _lottery_table(n: dict[str, Any]) -> Table:
    final = n.get("final") or {}
    modes = list(final)
    densities = sorted({float(d) for m in modes for d in final[m]}, reverse=True)
    rows = []
    for d in densities:
        key = f"{d:g}"
        rows.append([pct(d), *[pct(final[m][key]["mean"]) if key in final[m] else "" for m in modes]])
    return ["Density", *[m.replace("_", " ") for m in modes]], rows, set()


def _hessian_caption(n: dict[str, Any]) -> str:
    text = (f"The negative fraction of the Hessian spectrum (its index) goes from "
            f"<b>{pct(n['negative_fraction_first'])}</b> at the first probe to "
            f"<b>{pct(n['negative_fraction_last'])}</b> at the last, while the training loss goes from "
            f"{fmt(n['loss_first'])} to {fmt(n['loss_last'])}")
    if n.get("spearman") is not None:
        text += (f" (Spearman's ρ = {fmt(n['spearman'])} over every probe of {n.get('members', '?')} "
                 "member(s))")
    if n.get("outliers_last") is not None:
        text += f". At the last probe {fmt(n['outliers_last'])} eigenvalues lie above the bulk on average"
        by = n.get("outliers_by_classes") or {}
        if by:
            text += " (" + ", ".join(f"{fmt(v)} with {k} classes" for k, v in by.items()) + ")"
    return text + "."


def _hessian_table(n: dict[str, Any]) -> Table:
    rows = [["Negative fraction", pct(n.get("negative_fraction_first")),
             pct(n.get("negative_fraction_last"))],
            ["Training loss", fmt(n.get("loss_first")), fmt(n.get("loss_last"))]]
    return ["Member mean", "First probe", "Last probe"], rows, set()


def _spectra_caption(n: dict[str, Any]) -> str:
    widths = _by_width(n["last_probe"])
    (w0, a), (w1, b) = widths[0], widths[-1]
    return (f"At the last probe, λ<sub>max</sub> is <b>{fmt(a.get('lambda_max'))}</b> at width "
            f"{_width(w0)} and <b>{fmt(b.get('lambda_max'))}</b> at width {_width(w1)}; λ<sub>min</sub> is "
            f"{fmt(a.get('lambda_min'))} and {fmt(b.get('lambda_min'))}, and the negative fraction "
            f"{pct(a.get('negative_fraction'))} and "
            f"{pct(b.get('negative_fraction'))}. Mean over the seeds of each width.")


def _spectra_table(n: dict[str, Any]) -> Table:
    rows = [[_width(w), str(v.get("seeds", "")), fmt(v.get("step")), fmt(v.get("lambda_max")),
             fmt(v.get("lambda_min")), pct(v.get("negative_fraction")), fmt(v.get("trace"))]
            for w, v in _by_width(n["last_probe"])]
    return ["Width", "Seeds", "Step", "λ max", "λ min", "Negative fraction", "Trace"], rows, set()


def _regions_caption(n: dict[str, Any]) -> str:
    widths = _by_width(n["per_width"])
    peak = n.get("peak_width")
    top = dict(widths).get(float(peak)) if peak is not None else None
    last_w, last = widths[-1]
    text = ""
    if top is not None:
        text = (f"Decision regions are most fragmented at width <b>{_width(peak)}</b> "
                f"(<b>{fmt(top.get('fragmentation'))}</b> regions per class at the last snapshot)")
        if float(peak) != last_w:
            text += f" and least at the widest, width {_width(last_w)} ({fmt(last.get('fragmentation'))})"
    if n.get("interpolation_width") is not None:
        text += f"; the training error first falls to 1% or below at width {_width(n['interpolation_width'])}"
    return (text or "Fragmentation against width") + ". Mean over seeds."


def _regions_table(n: dict[str, Any]) -> Table:
    rows, marks = [], set()
    for i, (w, v) in enumerate(_by_width(n["per_width"])):
        rows.append([_width(w), str(v.get("seeds", "")), fmt(v.get("epoch")), fmt(v.get("fragmentation")),
                     fmt(v.get("fragmentation_raw")), pct(v.get("boundary_fraction"))])
        if n.get("peak_width") is not None and w == float(n["peak_width"]):
            marks.add(i)
    return ["Width", "Seeds", "Epoch", "Regions per class", "Regions", "Boundary fraction"], rows, marks


def _success_caption(n: dict[str, Any]) -> str:
    rows = sorted(n["per_width"], key=lambda r: r["width"])
    a, b = rows[0], rows[-1]
    text = (f"Success (final loss below {fmt(n.get('threshold'))} of the target variance) goes from "
            f"<b>{pct(a['rate'])}</b> ({a['successes']}/{a['trials']}) at width {_width(a['width'])} to "
            f"<b>{pct(b['rate'])}</b> ({b['successes']}/{b['trials']}) at width {_width(b['width'])}")
    if n.get("r_star") is not None and n.get("p_at_r_star") is not None:
        text += f"; at the teacher's width {n['r_star']} it is {pct(n['p_at_r_star'])}"
        if b.get("prediction") is not None:
            text += (f", which predicts {pct(b['prediction'])} at width {_width(b['width'])} as "
                     "independent starts")
    return text + f". Intervals: Wilson, {pct(n.get('confidence', 0.95))}."


def _success_table(n: dict[str, Any]) -> Table:
    rows = [[_width(r["width"]), f"{r['successes']:,} / {r['trials']:,}", pct(r["rate"]),
             f"{pct(r.get('low'))} to {pct(r.get('high'))}", pct(r.get("prediction"))]
            for r in sorted(n["per_width"], key=lambda r: r["width"])]
    return ["Width", "Successes", "Rate", "Interval", "Multi-start prediction"], rows, set()


def _widen_caption(n: dict[str, Any]) -> str:
    return (f"Widening from width {n['width_before']} to {n['width_after']} at step {n['step']} "
            f"({n['method']}) changes the training loss by at most {fmt(n.get('max_abs_loss_change'))} and "
            f"moves λ<sub>min</sub> "
            f"from {fmt(n.get('lambda_min_before'))} to {fmt(n.get('lambda_min_after'))}; "
            f"<b>{n.get('escaped', 0)} of {n.get('compared', n.get('members', 0))}</b> widened members "
            f"escape (median final loss {fmt(n.get('final_loss_widened'))} against "
            f"{fmt(n.get('final_loss_control'))} "
            f"for the narrow controls).")


def _widen_table(n: dict[str, Any]) -> Table:
    rows = [[str(r.get("seed", r.get("member", ""))), fmt(r.get("loss_before")), fmt(r.get("loss_after")),
             fmt(r.get("lambda_min_before")), fmt(r.get("lambda_min_after")), fmt(r.get("final_loss")),
             fmt(r.get("control_final_loss"))] for r in n.get("per_member") or []]
    return ["Seed", "Loss before", "Loss after", "λ min before", "λ min after", "Final loss",
            "Control's final loss"], rows, set()


def _ticket_variants(v: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    sigmas = sorted((v.get("sigma") or {}).items(), key=lambda x: float(x[0]))
    out = [(f"σ = {fmt(float(s))}", r) for s, r in sigmas]
    return out + [(k.replace("_", " "), r) for k, r in v.items() if k != "sigma" and isinstance(r, dict)]


def _ticket_caption(n: dict[str, Any]) -> str:
    parts = []
    for w, v in _by_width(n["per_width"]):
        rates = ", ".join(f"{name} {pct(r['rate'])} ({r['successes']}/{r['trials']})"
                          for name, r in _ticket_variants(v))
        parts.append(f"at width <b>{_width(w)}</b>: {rates}")
    return "Success of the ticket's students " + "; ".join(parts) + "."


def _ticket_table(n: dict[str, Any]) -> Table:
    widths = _by_width(n["per_width"])
    names = list(dict.fromkeys(name for _, v in widths for name, _ in _ticket_variants(v)))
    rows = []
    for w, v in widths:
        got = dict(_ticket_variants(v))
        rows.append([_width(w), *[f"{pct(got[k]['rate'])} ({got[k]['successes']}/{got[k]['trials']})"
                                  if k in got else "" for k in names]])
    return ["Width", *names], rows, set()


CAPTIONS: dict[str, tuple[Callable[[dict[str, Any]], str], Callable[[dict[str, Any]], Table]]] = {
    "double-descent": (_dd_caption, _dd_table),
    "lottery": (_lottery_caption, _lottery_table),
    "hessian": (_hessian_caption, _hessian_table),
    "spectra": (_spectra_caption, _spectra_table),
    "regions": (_regions_caption, _regions_table),
    "success": (_success_caption, _success_table),
    "widen": (_widen_caption, _widen_table),
    "ticket-perturb": (_ticket_caption, _ticket_table),
}
"""Per figure: its finding as a sentence (HTML) and its key numbers as a table, both from the
numbers the figure function returns (what it drew)."""


def caption(name: str, numbers: dict[str, Any]) -> str:
    """The finding of figure ``name`` in numbers (HTML), from the figure's returned numbers; a plain
    description when those numbers lack what the sentence needs."""
    try:
        return CAPTIONS[name][0](numbers)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return html.escape(FIGURES[name].help if name in FIGURES else name) + "."


def key_table(name: str, numbers: dict[str, Any], ident: str | None = None) -> str:
    """The key numbers of figure ``name`` as an HTML table (empty when there are none)."""
    try:
        header, rows, marks = CAPTIONS[name][1](numbers)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return ""
    return table_html(header, rows, marks, ident=ident, formatted=True) if rows else ""


# ---- reading the folder, refusing bad input ---------------------------------------------
def _shown(path: str | Path) -> str:
    """``path`` relative to the working folder when it lies below it, else as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


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


# ---- the setup paragraph ------------------------------------------------------------------
def _short(class_path: Any) -> str:
    return str(class_path or "").rsplit(".", 1)[-1]


def _seq(values: list[Any]) -> str:
    values = [_width(v) for v in values]
    if len(values) <= 8:
        return ", ".join(values)
    return ", ".join(values[:4]) + ", …, " + ", ".join(values[-2:])


def _data_text(data: dict[str, Any]) -> str:
    name, a = _short(data.get("class_path")), dict(data.get("init_args") or {})
    if name == "MNIST1D":
        n = _number(a.get("num_samples", 5000)) or 5000
        split = _number(a.get("train_split", 0.8)) or 0.8
        train = int(n * split)
        text = f"MNIST-1D ({train:,} training and {int(n) - train:,} test examples)"
    elif name == "TeacherStudent":
        text = (f"a teacher-student task ({a.get('task', 'regression')}; {a.get('input_dim', '?')} "
                f"Gaussian inputs, a teacher MLP of width {a.get('teacher_width', '?')}; "
                f"{fmt(a.get('n_train'))} training and {fmt(a.get('n_test'))} test examples)")
    elif name == "Toy2D":
        text = f"the 2-D toy data set {a.get('dataset', a.get('name', ''))}".rstrip()
    else:
        text = name or "an unknown data set"
    if a.get("train_subset"):
        text += f", a training subset of {fmt(a['train_subset'])}"
    noise = _number(a.get("label_noise"))
    if noise:
        model = a.get("noise_model", "uniform_incorrect")
        how = {"uniform": "replaced by a random label (which may equal the true one)",
               "uniform_incorrect": "replaced by a random wrong label",
               "balanced_flip": "flipped, the same fraction in every class"}.get(str(model),
                                                                                  f"noised ({model})")
        text += f", with <b>{pct(noise)}</b> of the training labels {how}"
    else:
        text += ", with clean labels"
    if a.get("batch_size"):
        text += f"; batch size {fmt(a['batch_size'])}"
    return text


def _model_text(model: dict[str, Any]) -> str:
    name, a = _short(model.get("class_path")), dict(model.get("init_args") or {})
    details = []
    if "depth" in a:
        details.append(f"{a['depth']} hidden layer{'s' if a['depth'] != 1 else ''}")
    if a.get("activation"):
        details.append(str(a["activation"]))
    return f"{name} ({', '.join(details)})" if details else name


def _optimizer_text(model: dict[str, Any]) -> str:
    a = dict(model.get("init_args") or {})
    opt = a.get("optimizer") or {}
    if not isinstance(opt, dict) or not opt:
        return ""
    oa = dict(opt.get("init_args") or {})
    bits = [f"lr {fmt(oa['lr'])}"] if "lr" in oa else []
    for key in ("momentum", "weight_decay"):
        if _number(oa.get(key)):
            bits.append(f"{key.replace('_', ' ')} {fmt(oa[key])}")
    text = _short(opt.get("class_path")) + (f" ({', '.join(bits)})" if bits else "")
    sched = a.get("lr_scheduler")
    if isinstance(sched, dict) and sched.get("class_path"):
        text += f" with {_short(sched['class_path'])}"
    return text


def _length_text(trainer: dict[str, Any]) -> str:
    steps, epochs = _number(trainer.get("max_steps")), _number(trainer.get("max_epochs"))
    if steps is not None and steps > 0:
        return f"{int(steps):,} steps"
    if epochs is not None:
        return f"{int(epochs):,} epoch{'s' if epochs != 1 else ''}"
    return ""


def _callbacks_text(trainer: dict[str, Any]) -> str:
    cbs = trainer.get("callbacks") or []
    names = [_short(c.get("class_path")) for c in cbs if isinstance(c, dict) and c.get("class_path")]
    return ", ".join(dict.fromkeys(names))


def _values(rows: list[dict[str, str]], key: str) -> list[Any]:
    out = {_number(r.get(key)) for r in rows if _number(r.get(key)) is not None}
    return sorted(out)


def reproduce_commands(spec: dict[str, Any], source: Path, figures: list[str]) -> list[str]:
    """The commands that rebuild the sweep folder and this page (``sweep``, ``report``, ``plot``)."""
    opts = spec.get("options") or {}
    configs = opts.get("configs") or spec.get("configs") or ["CONFIG"]
    cmd = ["overparam-lit sweep", *[f"-c {_shown(c)}" for c in configs]]
    for key in ("set", "grid"):
        cmd += [f"--{key} {v}" for v in opts.get(key) or []]
    if opts.get("pack"):
        cmd.append(f"--pack {opts['pack']}")
    if opts.get("width_groups"):
        groups = opts["width_groups"]
        cmd.append(f"--width-groups '{groups if isinstance(groups, str) else json.dumps(groups)}'")
    if opts.get("name"):
        cmd.append(f"--name {opts['name']}")
    folder = _shown(source)
    lines = [" ".join(cmd) + f" --out {folder}", f"overparam-lit report {folder}"]
    lines += [f"overparam-lit plot {name} {folder}" for name in figures]
    return lines


def setup_html(spec: dict[str, Any], cfg: dict[str, Any], rows: list[dict[str, str]] | None,
               source: Path, figures: list[str]) -> str:
    """The setup paragraph (data, noise, model, widths, seeds, optimizer, length) and the commands
    that reproduce the sweep and this page."""
    model, data, trainer = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("trainer") or {}
    done = [r for r in rows or [] if r.get("status") == "done"] or list(rows or [])
    widths, seeds = _values(done, "width"), _values(done, "seed")
    fits = [f for f in spec.get("fits", []) if isinstance(f, dict)]
    if not widths:
        widths = sorted({w for f in fits for w in f.get("widths") or []})
    if not seeds:
        seeds = sorted({s for f in fits for s in f.get("seeds") or []})
    parts = []
    if model or data:
        parts.append(f"<b>{html.escape(_model_text(model))}</b> networks trained on {_data_text(data)}.")
    if widths:
        text = f"Widths {_seq(widths)} ({len(widths)} widths"
        params = _values(done, "num_params")
        if len(params) >= 2:
            text += f", {fmt(int(params[0]))} to {fmt(int(params[-1]))} parameters"
        parts.append(text + ")" + (f", each with seeds {_seq(seeds)}." if seeds else "."))
    elif seeds:
        parts.append(f"Seeds {_seq(seeds)}.")
    opt, length = _optimizer_text(model), _length_text(trainer)
    if opt or length:
        parts.append("Trained with " + html.escape(opt or "the config's optimizer")
                     + (f" for {length}" if length else "") + ".")
    cbs = _callbacks_text(trainer)
    if cbs:
        parts.append(f"Study callbacks: {html.escape(cbs)}.")
    stages = spec.get("stages") or []
    members = len(done)
    if fits:
        parts.append((f"{members:,} members in " if members else "")
                     + f"{len(fits):,} fit{'s' if len(fits) != 1 else ''}"
                     + (" (seeds and widths trained together as one stacked network per fit)"
                        if members > len(fits) else "")
                     + (f" in {len(stages)} stages ({html.escape(', '.join(map(str, stages)))})"
                        if len(stages) > 1 else "") + ".")
    fixed = (spec.get("options") or {}).get("set") or []
    if fixed:
        parts.append("Fixed arguments: "
                     + ", ".join(f"<code>{html.escape(str(s))}</code>" for s in fixed) + ".")
    cmds = "\n".join(html.escape(c) for c in reproduce_commands(spec, source, figures))
    return (f"<p id='setup-text'>{' '.join(parts)}</p>"
            f"<p>Reproduce the runs, this page and each figure:</p><pre><code>{cmds}</code></pre>")


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


# ---- the page ------------------------------------------------------------------------------
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

"""Per figure of the report: its finding as a sentence in numbers (the caption) and its key
numbers as a table, both from the numbers the figure function returns."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

from overparam_lit.studies.figures import FIGURES
from overparam_lit.studies.report.numbers import _number, _width, fmt, pct, table_html

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

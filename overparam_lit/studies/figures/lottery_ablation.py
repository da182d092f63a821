"""``lottery-ablation``: where the gap between a ticket and random pruning comes from, at one
ticket level, with the biases and the output layer pruned or kept dense."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.studies.figures.common import describe, finish, fit_folders, num, output_path, titled
from overparam_lit.studies.figures.lottery import control_lift
from overparam_lit.studies.runs import imp_rows, ticket_rows
from overparam_lit.utils import check

VARIANTS = ("none", "biases", "output", "biases+output")
"""What a ticket keeps dense: nothing (the ticket as IMP pruned it), its biases, its output layer, both."""
LABELS = {"none": "as pruned", "biases": "biases dense", "output": "output layer dense",
          "biases+output": "biases and output dense"}
KINDS = ("ticket", "random_prune")


def ablation_rows(source: str | Path, level: int | None = None) -> list[dict[str, Any]]:
    """One row per member: ``variant`` (what was kept dense), ``kind`` (``ticket`` or
    ``random_prune``), ``seed``, ``density`` and ``best`` (best validation accuracy during training)
    at ticket ``level`` (default: the deepest level with a lifted control). ``none`` of the ticket
    is the IMP level itself; the other tickets and every random pruning are TicketStart fits."""
    controls, imps = [], []
    for run in fit_folders(source, "imp"):
        imps += imp_rows(run)
        lift = "+".join(control_lift(run)) or "none"
        controls += [{**r, "variant": lift} for r in ticket_rows(run) if r["mode"] in KINDS]
    lifted = [r["level"] for r in controls if r["variant"] != "none" and r.get("level") is not None]
    check(bool(lifted) or level is not None, "no control with a lifted ticket (TicketStart lift) found",
          str(source), "Run the ablation stage of configs/study_mnist1d_lottery_notebook.yaml and give its "
          "sweep folder.")
    level = max(lifted) if level is None else int(level)
    rows = [{"variant": "none", "kind": "ticket", "seed": r.get("seed"), "member": r.get("member"),
             "density": float(r["density"]), "best": num(r.get("best_val/acc"))}
            for r in imps if r["level"] == level]
    for r in controls:
        if r.get("level") == level and not (r["variant"] == "none" and r["mode"] == "ticket"):
            best = r.get("best_val/acc") if r.get("best_val/acc") is not None else r.get("best/val_acc")
            rows.append({"variant": r["variant"], "kind": r["mode"], "seed": r.get("seed"),
                         "member": r.get("member"), "density": float(r.get("density") or r["ticket_density"]),
                         "best": num(best)})
    return [dict(r, level=level) for r in rows if r["best"] is not None]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max over members of the best accuracy per variant and kind, the gap
    (ticket minus random pruning, of the means) per variant, and the density of each variant."""
    table: dict[str, Any] = {}
    for variant in VARIANTS:
        entry: dict[str, Any] = {}
        for kind in KINDS:
            vals = [r["best"] for r in rows if r["variant"] == variant and r["kind"] == kind]
            dens = [r["density"] for r in rows if r["variant"] == variant and r["kind"] == kind]
            if vals:
                entry[kind] = {"mean": float(np.mean(vals)), "lo": float(min(vals)), "hi": float(max(vals)),
                               "members": len(vals), "density": float(np.mean(dens))}
        if all(k in entry for k in KINDS):
            entry["gap"] = entry["ticket"]["mean"] - entry["random_prune"]["mean"]
        if entry:
            table[variant] = entry
    return {"level": rows[0]["level"] if rows else None, "variants": table}


def draw(summary: dict[str, Any], title: str) -> Any:
    """Grouped bars: the ticket and random pruning per variant (min-max over members), the gap above."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    variants = [v for v in VARIANTS if v in summary["variants"]]
    x = np.arange(len(variants))
    for i, kind in enumerate(KINDS):
        cells = [summary["variants"][v].get(kind) for v in variants]
        means = np.array([c["mean"] if c else np.nan for c in cells])
        err = np.array([[c["mean"] - c["lo"], c["hi"] - c["mean"]] if c else [0, 0] for c in cells]).T
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=err, capsize=3, color=f"C{i}",
               label="ticket (IMP)" if kind == "ticket" else "random pruning (random_prune)")
    for xi, v in zip(x, variants, strict=True):
        entry = summary["variants"][v]
        if "gap" in entry:
            top = max(entry[k]["hi"] for k in KINDS)
            ax.annotate(f"gap {100 * entry['gap']:+.1f}", (xi, top), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 3), textcoords="offset points")
    lows = [summary["variants"][v][k]["lo"] for v in variants for k in KINDS if k in summary["variants"][v]]
    if lows:
        ax.set_ylim(min(lows) - 0.05, None)
    ax.set_xticks(x, [LABELS[v] for v in variants])
    ax.set_ylabel("best val/acc during training")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper right")
    return titled(fig, f"{title}\nticket level {summary['level']}; bars: mean over members, "
                       "whiskers: min-max", fontsize=9)


def figure(source: str | Path, out: str | Path | None = None, level: int | None = None,
           title: str = "Ticket vs random pruning: biases and output layer") -> dict[str, Any]:
    """The best accuracy of the ticket and of random pruning at ticket ``level`` under ``source``,
    as pruned and with the biases and/or the output layer kept dense (TicketStart's ``lift``), and
    the gap between them per variant (:func:`summarise`)."""
    title = f"{title}: {describe(source)}" if describe(source) else title
    summary = summarise(ablation_rows(source, level))
    check(bool(summary["variants"]), "no ticket or random pruning result at that level", level,
          "Give a level with ablation controls (see the study's ablation stage).")
    return finish(draw(summary, title), summary, output_path(source, "lottery-ablation", out))

"""``lottery``: accuracy against density for IMP tickets and each control, final and best."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.figures.common import (
    describe,
    finish,
    fit_folders,
    key_of,
    num,
    output_path,
    titled,
)
from overparam_lit.studies.results import group_curves
from overparam_lit.studies.runs import imp_rows, ticket_rows
from overparam_lit.utils import check

CONTROLS = ("random_prune", "random_reinit", "random_mask", "perturb_rest")
LABELS = {"ticket": "IMP ticket (rewound)", "ticket_retrained": "ticket, retrained by TicketStart",
          "random_reinit": "random_reinit (same mask, fresh init)",
          "random_mask": "random_mask (ticket's per-tensor densities, random positions)",
          "random_prune": "random_prune (random pruning, IMP's own pools and rates)",
          "perturb_rest": "perturb_rest (dense, rest re-drawn)"}


def lottery_rows(source: str | Path, metric: str = "test/acc") -> list[dict[str, Any]]:
    """One row per member of every IMP level (``mode`` ``ticket``) and every ticket control
    (``mode`` its TicketStart mode; ``ticket`` mode is ``ticket_retrained``): ``seed``, ``level``,
    ``density`` (the level's mean density; a control sits at its ticket's), ``final`` (``metric`` at
    the end of training) and ``best`` (the best validation accuracy during training). A control
    with parts of its ticket kept dense (TicketStart's ``lift``) is its own mode, e.g.
    ``random_prune, biases+output dense``, at the density of its own masks."""
    rows: list[dict[str, Any]] = []
    for run in fit_folders(source, "imp"):
        for r in imp_rows(run):
            rows.append({"mode": "ticket", "seed": r.get("seed"), "level": r["level"],
                         "density": round(float(r["level_density"]), 4), "final": num(r.get(metric)),
                         "best": num(r.get("best_val/acc"))})
        lift = control_lift(run)
        for r in ticket_rows(run):
            mode = "ticket_retrained" if r["mode"] == "ticket" else r["mode"]
            if r["mode"] == "perturb_rest" and r.get("sigma") is not None:
                mode = f"perturb_rest_sigma{r['sigma']:g}"
            if lift:
                mode = f"{mode}, {'+'.join(lift)} dense"
            best = r.get("best_val/acc") if r.get("best_val/acc") is not None else r.get("best/val_acc")
            rows.append({"mode": mode, "seed": r.get("seed"), "level": r.get("level"),
                         "density": round(float(r["ticket_density"]), 4), "final": num(r.get(metric)),
                         "best": num(best)})
    check(any(r["final"] is not None for r in rows), f"no IMP level or ticket result with {metric!r} found",
          str(source), "Run IMP (-c callbacks/imp.yaml) and its controls (-c callbacks/ticket.yaml), e.g. "
          "overparam-lit sweep -c configs/study_mnist1d_lottery.yaml, and give its folder.")
    return rows


def control_lift(run: str | Path) -> list[str]:
    """The parts of its ticket a control kept dense (``lift`` of ``imp/ticket_result.json``)."""
    folder = RunFolder(run)
    if not folder.ticket_result.is_file():
        return []
    return list(folder.read_json(folder.ticket_result).get("lift") or [])


def _table(rows: list[dict[str, Any]], key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    curves = group_curves(rows, "density", key, by="mode")
    table = {mode: {key_of(d): {"mean": float(m), "lo": float(lo), "hi": float(hi), "seeds": int(n)}
                    for d, m, lo, hi, n in zip(c["x"], c["mean"], c["lo"], c["hi"], c["n"], strict=True)}
             for mode, c in curves.items()}
    return curves, table


def summarise(rows: list[dict[str, Any]], metric: str = "test/acc") -> dict[str, Any]:
    """Mean and min-max band over seeds per mode and density, of the final ``metric`` (``final``)
    and of the best validation accuracy (``best``); ``dense`` is the level-0 ticket (the dense
    net); ``comparison`` lists, for every level with controls, the final means side by side."""
    final_curves, final = _table(rows, "final")
    best_curves, best = _table(rows, "best")
    dense = {}
    if "ticket" in final and key_of(1.0) in final["ticket"]:
        dense["final"] = final["ticket"][key_of(1.0)]["mean"]
    if "ticket" in best and key_of(1.0) in best["ticket"]:
        dense["best"] = best["ticket"][key_of(1.0)]["mean"]
    comparison = []
    for d in sorted({r["density"] for r in rows if r["mode"] != "ticket"}, reverse=True):
        entry: dict[str, Any] = {"density": d, "level": next((r["level"] for r in rows if r["density"] == d
                                                             and r["level"] is not None), None)}
        for mode, table in final.items():
            if key_of(d) in table:
                entry[mode] = table[key_of(d)]["mean"]
        comparison.append(entry)
    return {"metric": metric, "seeds": len({r["seed"] for r in rows}), "dense": dense, "final": final,
            "best": best, "comparison": comparison, "curves": {"final": final_curves, "best": best_curves}}


def draw(summary: dict[str, Any], title: str) -> Any:
    """Two panels: the final ``metric`` and the best validation accuracy against density."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.0))
    axes = fig.subplots(1, 2)
    order = ["ticket", "ticket_retrained", *CONTROLS]
    for ax, part, label in ((axes[0], "final", summary["metric"] + " at the end of training"),
                            (axes[1], "best", "best val/acc during training")):
        curves = summary["curves"][part]
        modes = [m for m in order if m in curves] + sorted(set(curves) - set(order))
        for i, mode in enumerate(modes):
            c = curves[mode]
            ax.plot(c["x"], c["mean"], marker="os^dvP*"[i % 7], ms=4, color=f"C{i}",
                    label=LABELS.get(mode, mode))
            if (c["n"] > 1).any():
                ax.fill_between(c["x"], c["lo"], c["hi"], color=f"C{i}", alpha=0.2, lw=0)
        if part in summary["dense"]:
            dense = summary["dense"][part]
            ax.axhline(dense, color="k", ls=":", lw=1, label=f"dense ({dense:.3f})")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("density of the ticket (fraction of prunable weights kept)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return titled(fig, f"{title}\nmean of {summary['seeds']} seed(s), band: min-max over seeds; "
                       "controls at their ticket's density", fontsize=9)


def figure(source: str | Path, out: str | Path | None = None, metric: str = "test/acc",
           title: str = "Lottery tickets and controls") -> dict[str, Any]:
    """IMP tickets (every level of ``imp/summary.json``, each member) and their controls (every
    ``imp/ticket_result.json``) under ``source``: ``metric`` at the end of training and the best
    validation accuracy during training against the ticket's density. Returns :func:`summarise`'s
    numbers without the curves."""
    title = f"{title}: {describe(source)}" if describe(source) else title
    summary = summarise(lottery_rows(source, metric), metric)
    fig = draw(summary, title)
    small = {k: v for k, v in summary.items() if k != "curves"}
    return finish(fig, small, output_path(source, "lottery", out))


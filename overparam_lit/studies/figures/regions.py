"""``regions``: decision-region fragmentation against width, and the same planes at every width."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.figures.common import (
    describe,
    finish,
    fit_folders,
    key_of,
    member_table,
    num,
    output_path,
    titled,
)
from overparam_lit.studies.results import group_curves
from overparam_lit.studies.runs import regions_rows, run_num_classes
from overparam_lit.utils import ConfigError, check

KEYS = ("regions/fragmentation", "regions/fragmentation_raw", "regions/boundary_fraction")


def last_snapshots(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last snapshot of every member of every run."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["run"], int(r["member"]))
        if key not in last or r["epoch"] > last[key]["epoch"]:
            last[key] = r
    return list(last.values())


def summarise(rows: list[dict[str, Any]], members: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per width, the mean over members (seeds) at their last snapshot of the fragmentation
    (regions per class present), its raw count and the boundary fraction, with ``seeds`` and
    ``epoch``; ``peak_width`` (largest mean fragmentation) and, from the members' final train
    accuracy where given, ``interpolation_width`` (first width whose mean train error is <= 0.01)."""
    last = [r for r in last_snapshots(rows) if r.get("width") is not None]
    check(bool(last), "no decision-region snapshots with a known width found", len(rows),
          "Fit a width family with -c callbacks/regions.yaml and give its folder.")
    per_width: dict[str, dict[str, Any]] = {}
    for w in sorted({float(r["width"]) for r in last}):
        group = [r for r in last if float(r["width"]) == w]
        entry: dict[str, Any] = {"seeds": len(group), "epoch": int(max(r["epoch"] for r in group))}
        for key in KEYS:
            vals = [float(r[key]) for r in group if num(r.get(key)) is not None]
            entry[key.split("/", 1)[1]] = float(np.mean(vals)) if vals else None
        per_width[key_of(w)] = entry
    frag = {k: v["fragmentation"] for k, v in per_width.items() if v["fragmentation"] is not None}
    peak = float(max(frag, key=frag.get)) if frag else None
    out: dict[str, Any] = {"per_width": per_width, "peak_width": peak, "interpolation_width": None}
    if members:
        from overparam_lit.studies.figures.double_descent import summarise as dd

        try:
            numbers = dd(members)
            out["interpolation_width"] = numbers["interpolation_width"]
            for k, v in numbers["per_width"].items():
                if k in per_width:
                    per_width[k].update(train_error=v.get("train_error"), test_error=v["test_error"])
        except ConfigError:
            pass
    return out


def draw(summary: dict[str, Any], rows: list[dict[str, Any]], title: str) -> Any:
    """Left: fragmentation against epoch (mean over seeds, per width); right: the last snapshot's
    fragmentation against width (mean and min-max band) with the interpolation threshold."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    ax = fig.subplots(1, 2)
    widths = sorted({float(r["width"]) for r in rows if r.get("width") is not None})
    for i, w in enumerate(widths):
        c = group_curves([r for r in rows if r.get("width") is not None and float(r["width"]) == w], "epoch",
                         "regions/fragmentation").get(None)
        if c is not None:
            colour = colormaps["plasma"](0.85 * i / max(1, len(widths) - 1))
            ax[0].plot(np.maximum(c["x"], 0.5), c["mean"], "o-", ms=3, color=colour, label=f"width {w:g}")
    ax[0].set_xscale("log")
    ax[0].set_xlabel("epoch (0 drawn at 0.5)")
    ax[0].set_ylabel("regions per class present")
    ax[0].legend(fontsize=6)
    table = [{"width": float(r["width"]), "frag": r.get("regions/fragmentation")}
             for r in last_snapshots(rows) if r.get("width") is not None]
    c = group_curves(table, "width", "frag").get(None)
    if c is not None:
        ax[1].plot(c["x"], c["mean"], "o-", ms=4, color="C3")
        ax[1].fill_between(c["x"], c["lo"], c["hi"], alpha=0.2, lw=0, color="C3")
    if summary.get("interpolation_width"):
        ax[1].axvline(summary["interpolation_width"], color="grey", ls="--", lw=1,
                      label="interpolation threshold")
        ax[1].legend(fontsize=7)
    ax[1].set_xscale("log")
    ax[1].set_xlabel("width")
    ax[1].set_ylabel("fragmentation at the last snapshot")
    return titled(fig, f"{title} (1 = every class present is one region)", ax, fontsize=9)


def draw_planes(rows: list[dict[str, Any]], path: Path, planes: list[int], seed: int | None) -> Path | None:
    """The same planes (rows) at the last snapshot of each width (columns), for one seed (the
    smallest, unless ``seed``); says whether the widths share one plane bank."""
    from overparam_lit.regions import PlaneBank, load_label_maps, render

    chosen: dict[float, dict[str, Any]] = {}
    for r in sorted(last_snapshots(rows), key=lambda r: (r.get("seed") is None, r.get("seed") or 0)):
        if r.get("width") is None or not r.get("maps") or (seed is not None and r.get("seed") != seed):
            continue
        chosen.setdefault(float(r["width"]), r)
    if not chosen:
        return None
    cols = [chosen[w] for w in sorted(chosen)]
    banks = [Path(r["bank"]) if r.get("bank") and Path(r["bank"]).is_file()
             else RunFolder(r["run"]).regions_bank for r in cols]
    check(banks[0].is_file(), "plane bank not found", str(banks[0]),
          "Keep the run's regions/bank.pt (or the shared bank_path) next to its maps.")
    bank = PlaneBank.load(banks[0])
    same = all(b.resolve() == banks[0].resolve() for b in banks)
    preds = []
    for r in cols:
        pred = load_label_maps(str(RunFolder(r["run"]).regions_maps(int(r["epoch"])))).pred
        preds.append(pred[int(r["member"])] if pred.ndim == 4 else pred)
    planes = [p for p in planes if p < bank.num_planes] or [0]
    titles = [f"width {float(r['width']):g}, epoch {r['epoch']}" for r in cols]
    note = "one plane bank for every width" if same else "the widths' banks differ: planes are not the same"
    classes = run_num_classes(cols[0]["run"]) or int(max(p.max() for p in preds)) + 1
    return render.plane_grid(preds, bank, planes, classes, titles, path,
                             suptitle=f"Last snapshot, seed {cols[0].get('seed')}; {note}")


def figure(source: str | Path, out: str | Path | None = None, seed: int | None = None,
           planes: list[int] | None = None, title: str = "Decision-region fragmentation across widths"
           ) -> dict[str, Any]:
    """Fragmentation of the decision regions over training and against width (last snapshot, mean
    over seeds with a min-max band), and a second picture ``<out>_planes.png`` of the same planes
    at every width. Returns :func:`summarise`'s numbers with ``planes_figure``."""
    title = f"{title}: {describe(source)}" if describe(source) else title
    runs = fit_folders(source, "regions")
    rows = [r for run in runs for r in regions_rows(run)]
    check(bool(rows), "no regions/history.json found", str(source),
          "Fit with -c callbacks/regions.yaml (overparam-lit sweep -c configs/study_mnist1d_regions.yaml).")
    try:
        members = member_table(source)
    except ConfigError:
        members = None
    summary = summarise(rows, members)
    png = output_path(source, "regions", out)
    pic = draw_planes(rows, png.with_name(png.stem + "_planes.png"), planes or [0, 1, 2], seed)
    summary["planes_figure"] = str(pic) if pic is not None else None
    return finish(draw(summary, rows, title), summary, png)

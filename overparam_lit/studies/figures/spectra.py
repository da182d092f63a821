"""``spectra``: Hessian spectral densities across widths, and the extreme eigenvalues against width."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.studies.figures.common import describe, finish, fit_folders, key_of, output_path, titled
from overparam_lit.studies.results import group_curves
from overparam_lit.studies.runs import hessian_rows
from overparam_lit.utils import check

SCALARS = ("lambda_max", "lambda_min", "negative_fraction", "trace")


def last_probes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last probe of every member of every run."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["run"], int(r["member"]))
        if key not in last or r["step"] > last[key]["step"]:
            last[key] = r
    return list(last.values())


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per width, the mean over members (seeds) at their last probe of ``lambda_max``,
    ``lambda_min`` (resolved ones), ``negative_fraction`` and ``trace``, with ``seeds`` and
    ``step``; ``widths`` lists them in order."""
    check(bool(rows), "no Hessian probes found", 0, "Fit with -c callbacks/hessian.yaml and give the folder.")
    last = [r for r in last_probes(rows) if r.get("width") is not None]
    check(bool(last), "no width is known for the probed runs", len(rows),
          "Probe runs of a width family (their config.yaml names model.init_args.width).")
    per_width: dict[str, dict[str, Any]] = {}
    for w in sorted({float(r["width"]) for r in last}):
        group = [r for r in last if float(r["width"]) == w]
        entry: dict[str, Any] = {"seeds": len(group), "step": int(max(r["step"] for r in group))}
        for key in SCALARS:
            vals = [r[key] for r in group if r.get(key) is not None and np.isfinite(r[key])]
            entry[key] = float(np.mean(vals)) if vals else None
        per_width[key_of(w)] = entry
    return {"widths": [float(k) for k in per_width], "last_probe": per_width}


def draw(summary: dict[str, Any], rows: list[dict[str, Any]], title: str) -> Any:
    """Left: the spectral density at the last probe, one curve per width (members averaged on a
    common grid); right: the last probe's scalars against width (mean and min-max band)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    ax = fig.subplots(1, 4, gridspec_kw={"width_ratios": [2, 1, 1, 1]})
    last = [r for r in last_probes(rows) if "density" in r and r.get("width") is not None]
    widths = sorted({float(r["width"]) for r in last})
    for i, w in enumerate(widths):
        group = [r for r in last if float(r["width"]) == w]
        lo = min(float(r["density_grid"].min()) for r in group)
        hi = max(float(r["density_grid"].max()) for r in group)
        grid = np.linspace(lo, hi, 400)
        dens = np.mean([np.interp(grid, r["density_grid"], r["density"], left=0, right=0) for r in group], 0)
        colour = colormaps["plasma"](0.85 * i / max(1, len(widths) - 1))
        ax[0].plot(grid, np.maximum(dens, 1e-8), color=colour, lw=1, label=f"width {w:g} ({len(group)})")
    ax[0].set_yscale("log")
    ax[0].set_ylim(bottom=1e-6)
    ax[0].set_xlabel("eigenvalue")
    ax[0].set_ylabel("spectral density (SLQ), last probe")
    ax[0].legend(fontsize=6)
    table = [{"width": float(r["width"]), **{k: r.get(k) for k in SCALARS}} for r in last_probes(rows)
             if r.get("width") is not None]
    for a, key in zip(ax[1:], ("lambda_max", "lambda_min", "negative_fraction"), strict=True):
        c = group_curves(table, "width", key).get(None)
        if c is not None:
            a.plot(c["x"], c["mean"], "o-", ms=4)
            a.fill_between(c["x"], c["lo"], c["hi"], alpha=0.2, lw=0)
        a.set_xscale("log")
        a.set_xlabel("width")
        a.set_title(f"{key} at the last probe", fontsize=9)
    return titled(fig, title, ax, fontsize=10)


def figure(source: str | Path, out: str | Path | None = None,
           title: str = "Hessian spectra across widths") -> dict[str, Any]:
    """Spectral densities (SLQ) at the last probe of every width under ``source`` and the last
    probe's ``lambda_max``, ``lambda_min`` and negative fraction against width. Returns
    :func:`summarise`'s numbers."""
    title = f"{title}: {describe(source)}" if describe(source) else title
    rows = [r for run in fit_folders(source, "hessian") for r in hessian_rows(run)]
    summary = summarise(rows)
    return finish(draw(summary, rows, title), summary, output_path(source, "spectra", out))

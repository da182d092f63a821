"""Hessian spectrum figures of runs with the ``HessianProbe`` callback (``-c callbacks/hessian.yaml``).

For every run folder under the given paths (runs or sweep folders) that has ``hessian/``:

- ``OUT_scalars.png``: ``lambda_max``, ``lambda_min`` and ``negative_fraction`` against the
  training step, one line per run (coloured by width);
- ``OUT_density.png``: the spectral density (SLQ) at each probe, one panel per run, coloured
  from early (dark) to late (light) training;
- ``OUT_width.png``: the last probe's ``lambda_max``, ``lambda_min`` and ``negative_fraction``
  against width (mean over seeds, min-max band), when the runs span several widths.

Probes are read from ``hessian/probe_step<step>.npz`` (see ``overparam_lit.callbacks.hessian``);
a run without them falls back to the ``hessian/*`` columns of its ``metrics.csv`` (no density).
Prints one JSON line with the last probe of every run.

    python scripts/plot_spectra.py runs/sweep [more runs...] [--out runs/sweep/spectra]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from overparam_lit.studies import (  # noqa: E402
    find_runs,
    group_curves,
    read_metrics_csv,
    run_label,
    run_seed,
    run_width,
    series,
)
from overparam_lit.utils import ConfigError, atomic_savefig  # noqa: E402

SCALARS = ("lambda_max", "lambda_min", "negative_fraction")


def load_probes(run: Path) -> list[dict[str, Any]]:
    """Probes of a run, sorted by step: scalars and (if saved) the density on its grid."""
    probes = []
    for f in sorted((run / "hessian").glob("probe_step*.npz")):
        with np.load(f) as z:
            p = {k: float(z[k]) for k in (*SCALARS, "trace") if k in z.files}
            p["step"] = int(z["step"]) if "step" in z.files else int(f.stem.removeprefix("probe_step"))
            if "density" in z.files:
                p["grid"], p["density"] = np.array(z["density_grid"]), np.array(z["density"])
        probes.append(p)
    if not probes and (run / "metrics.csv").is_file():
        rows = read_metrics_csv(run)
        x = "hessian/step" if any("hessian/step" in r for r in rows) else "step"
        cols = {k: dict(zip(*series(rows, f"hessian/{k}", x), strict=True)) for k in SCALARS}
        for step in sorted(set().union(*[c.keys() for c in cols.values()])):
            probes.append({"step": int(step), **{k: cols[k][step] for k in SCALARS if step in cols[k]}})
    return sorted(probes, key=lambda p: p["step"])


def colours(widths: list[float | None]) -> list[Any]:
    from matplotlib import colormaps

    known = sorted({w for w in widths if w is not None})
    cmap = colormaps["plasma"]
    pos = {w: (i / max(1, len(known) - 1)) * 0.85 for i, w in enumerate(known)}
    return [cmap(pos[w]) if w is not None else "grey" for w in widths]


def plot_scalars(runs: list[Path], probes: dict[Path, list[dict]], out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.3))
    axes = fig.subplots(1, 3)
    cols = colours([run_width(r) for r in runs])
    for run, col in zip(runs, cols, strict=True):
        ps = probes[run]
        for ax, key in zip(axes, SCALARS, strict=True):
            pts = [(max(p["step"], 1), p[key]) for p in ps if key in p]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", ms=3, color=col, label=run_label(run))
    for ax, key in zip(axes, SCALARS, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.suptitle("Hessian of the training loss on the probe set, during training", fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, out.with_name(out.name + "_scalars.png"), dpi=100)


def plot_density(runs: list[Path], probes: dict[Path, list[dict]], out: Path, max_runs: int) -> Path | None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    shown = [r for r in runs if any("density" in p for p in probes[r])][:max_runs]
    if not shown:
        return None
    fig = Figure(figsize=(3.4 * len(shown), 3.0))
    axes = np.atleast_1d(fig.subplots(1, len(shown)))
    for ax, run in zip(axes, shown, strict=True):
        ps = [p for p in probes[run] if "density" in p]
        for i, p in enumerate(ps):
            col = colormaps["viridis"](0.9 * i / max(1, len(ps) - 1))
            ax.plot(p["grid"], np.maximum(p["density"], 1e-8), color=col, lw=1,
                    label=f"step {p['step']}" if i in (0, len(ps) - 1) else None)
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-6)
        ax.set_xlabel("eigenvalue")
        ax.set_title(run_label(run), fontsize=8)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("spectral density (SLQ)")
    fig.suptitle("Spectral density over training (dark: early, light: late)", fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, out.with_name(out.name + "_density.png"), dpi=100)


def plot_width(runs: list[Path], probes: dict[Path, list[dict]], out: Path) -> Path | None:
    from matplotlib.figure import Figure

    rows = []
    for run in runs:
        if probes[run] and run_width(run) is not None:
            rows.append({"width": run_width(run), **{k: probes[run][-1].get(k) for k in SCALARS}})
    if len({r["width"] for r in rows}) < 2:
        return None
    fig = Figure(figsize=(11, 3.0))
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, SCALARS, strict=True):
        c = group_curves(rows, "width", key).get(None)
        if c is None:
            continue
        ax.plot(c["x"], c["mean"], "o-", ms=4)
        ax.fill_between(c["x"], c["lo"], c["hi"], alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel("width")
        ax.set_title(f"{key} at the last probe", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_savefig(fig, out.with_name(out.name + "_width.png"), dpi=100)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", type=Path, nargs="+", help="run or sweep folders")
    p.add_argument("--out", type=Path, help="output prefix (default: FIRST_PATH/spectra)")
    p.add_argument("--max-runs", type=int, default=6, help="runs in the density figure")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = find_runs(args.paths, "hessian", "hessian")
    except ConfigError as err:
        print(f"plot_spectra.py: error: {err}", file=sys.stderr)
        return 2
    runs = sorted(runs, key=lambda r: (run_width(r) or 0, run_seed(r) or 0, str(r)))
    probes = {r: load_probes(r) for r in runs}
    out = args.out or args.paths[0] / "spectra"
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [plot_scalars(runs, probes, out), plot_density(runs, probes, out, args.max_runs),
               plot_width(runs, probes, out)]
    for path in written:
        if path is not None:
            print(f"wrote {path}")
    last = {str(r): ({k: v for k, v in probes[r][-1].items() if k in (*SCALARS, "trace", "step")}
                     if probes[r] else None) for r in runs}
    print(json.dumps({"runs": len(runs), "last_probe": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decision-region figures of runs with the ``DecisionRegions`` callback (``-c callbacks/regions.yaml``).

For every run folder under the given paths (runs or sweep folders) that has ``regions/``:

- ``OUT_fragmentation.png``: ``regions/fragmentation`` against epoch, one line per run
  (coloured by width), and the last snapshot's fragmentation against width (mean over seeds,
  min-max band);
- ``OUT_planes.png``: the same planes (rows) at the last snapshot of each width (columns), for
  one seed. Runs of a sweep share planes when they were given one ``bank_path``; if their banks
  differ, each column is drawn on the first run's bank axes and the title says so.

Reads ``regions/history.json``, ``regions/maps_epoch*.npz`` and the bank named in the history
(else ``regions/bank.pt``). Prints one JSON line with the last fragmentation of every run.

    python scripts/plot_regions.py runs/sweep [--planes 0 1 2] [--seed 0] [--out runs/sweep/regions]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from overparam_lit.studies import find_runs, group_curves, run_label, run_seed, run_width  # noqa: E402
from overparam_lit.utils import ConfigError, atomic_savefig, check  # noqa: E402


def history(run: Path) -> list[dict[str, Any]]:
    path = run / "regions" / "history.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text()).get("snapshots", [])


def bank_path(run: Path) -> Path:
    path = run / "regions" / "history.json"
    if path.is_file():
        named = json.loads(path.read_text()).get("bank")
        if named and Path(named).is_file():
            return Path(named)
    return run / "regions" / "bank.pt"


def num_classes(run: Path, pred: np.ndarray) -> int:
    hp = run / "hparams.yaml"
    if hp.is_file():
        n = (yaml.safe_load(hp.read_text()) or {}).get("num_classes")
        if isinstance(n, int) and n > 0:
            return n
    return int(pred.max()) + 1


def plot_fragmentation(runs: list[Path], out: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    ax = fig.subplots(1, 2)
    widths = sorted({w for w in (run_width(r) for r in runs) if w is not None})
    rows = []
    for run in runs:
        h = [s for s in history(run) if "regions/fragmentation" in s]
        if not h:
            continue
        w = run_width(run)
        col = colormaps["plasma"](0.85 * widths.index(w) / max(1, len(widths) - 1)) if w in widths else "grey"
        ax[0].plot([s["epoch"] for s in h], [s["regions/fragmentation"] for s in h], "o-", ms=3, color=col,
                   label=run_label(run))
        if w is not None:
            rows.append({"width": w, "frag": h[-1]["regions/fragmentation"]})
    ax[0].set_xscale("symlog", linthresh=1)
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("regions per class present")
    ax[0].legend(fontsize=6)
    c = group_curves(rows, "width", "frag").get(None)
    if c is not None:
        ax[1].plot(c["x"], c["mean"], "o-", ms=4)
        ax[1].fill_between(c["x"], c["lo"], c["hi"], alpha=0.2, lw=0)
        ax[1].set_xscale("log")
    ax[1].set_xlabel("width")
    ax[1].set_ylabel("fragmentation at the last snapshot")
    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle("Decision-region fragmentation (1 = every class present is one region)", fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, out.with_name(out.name + "_fragmentation.png"), dpi=100)


def plot_planes(runs: list[Path], out: Path, planes: list[int], seed: int | None) -> Path | None:
    from overparam_lit.regions import PlaneBank, load_label_maps, render

    chosen: dict[float, Path] = {}
    for run in runs:
        w = run_width(run)
        if w is None or w in chosen or (seed is not None and run_seed(run) not in (seed, None)):
            continue
        if history(run) and (run / "regions" / history(run)[-1].get("maps", "")).is_file():
            chosen[w] = run
    if not chosen:
        return None
    cols = [chosen[w] for w in sorted(chosen)]
    banks = [bank_path(r) for r in cols]
    check(banks[0].is_file(), "plane bank not found", str(banks[0]),
          "Keep the run's regions/bank.pt (or the shared bank_path) next to its maps.")
    bank = PlaneBank.load(banks[0])
    same = all(b.resolve() == banks[0].resolve() for b in banks) or all(
        b.is_file() and PlaneBank.load(b).origin.shape == bank.origin.shape
        and bool((PlaneBank.load(b).origin == bank.origin).all()) for b in banks)
    preds = [load_label_maps(str(r / "regions" / history(r)[-1]["maps"])).pred for r in cols]
    planes = [p for p in planes if p < bank.num_planes] or [0]
    titles = [f"width {run_width(r):g}, epoch {history(r)[-1]['epoch']}" for r in cols]
    note = "same planes for every width" if same else "banks differ between runs: planes are not the same"
    return render.plane_grid(preds, bank, planes, num_classes(cols[0], preds[0]), titles,
                             out.with_name(out.name + "_planes.png"), suptitle=f"Last snapshot; {note}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", type=Path, nargs="+", help="run or sweep folders")
    p.add_argument("--planes", type=int, nargs="+", default=[0, 1, 2], help="plane indices (rows)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the runs in the picture grid (default: any)")
    p.add_argument("--out", type=Path, help="output prefix (default: FIRST_PATH/regions)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = find_runs(args.paths, "regions", "regions")
        runs = [r for r in runs if history(r)]
        check(bool(runs), "no regions/history.json in the run folders", [str(p) for p in args.paths],
              "Let the runs finish at least one snapshot.")
    except ConfigError as err:
        print(f"plot_regions.py: error: {err}", file=sys.stderr)
        return 2
    runs = sorted(runs, key=lambda r: (run_width(r) or 0, run_seed(r) or 0, str(r)))
    out = args.out or args.paths[0] / "regions_summary"
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in (plot_fragmentation(runs, out), plot_planes(runs, out, args.planes, args.seed)):
        if path is not None:
            print(f"wrote {path}")
    last = {str(r): history(r)[-1].get("regions/fragmentation") for r in runs}
    print(json.dumps({"runs": len(runs), "last_fragmentation": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

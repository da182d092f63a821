"""Lottery-ticket figure: accuracy against density for IMP tickets and each control.

Sources (any mix, given as paths):

- folders, searched recursively for IMP runs (``imp/summary.json``: one point per level, the
  "ticket" curve) and for ticket / control runs of ``TicketStart`` (``imp/ticket_result.json``:
  one point for its ``mode``: ``ticket``, ``random_reinit``, ``random_mask``, ``perturb_rest``);
  the seed of a run is ``seed_everything`` of its ``config.yaml``, else a ``seed<N>`` part of its
  path, else 0;
- ``lottery_science.json`` files written by ``scripts/lottery_science.py`` (their rows).

Draws the mean over seeds with a band from the lowest to the highest seed, the dense accuracy
as a dotted line, density on a log axis decreasing to the right. Writes ``OUT.png`` and
``OUT.json`` (the table) and prints the table as one JSON line.

    python scripts/plot_lottery.py runs/lottery_science [--metric test/acc] [--out docs/figures/lottery]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from overparam_lit.studies import group_curves  # noqa: E402
from overparam_lit.utils import ConfigError, atomic_savefig, atomic_write_json, check  # noqa: E402

LABELS = {"imp": "IMP ticket (rewound)", "ticket": "IMP ticket (rewound)", "random_reinit": "random_reinit",
          "random_mask": "random_mask", "perturb_rest": "perturb_rest"}


def run_seed(run: Path) -> int:
    """Seed of a run folder: its config's ``seed_everything``, else ``seed<N>`` in its path."""
    cfg = run / "config.yaml"
    if cfg.is_file():
        try:
            seed = (yaml.safe_load(cfg.read_text()) or {}).get("seed_everything")
            if isinstance(seed, int):
                return seed
        except yaml.YAMLError:
            pass
    for part in reversed(run.resolve().parts):
        m = re.fullmatch(r".*seed[_-]?(\d+).*", part)
        if m:
            return int(m.group(1))
    return 0


def collect(paths: list[Path], metric: str) -> list[dict[str, Any]]:
    """Rows ``{seed, mode, level, density, acc}`` from run folders and lottery_science.json files."""
    key = metric.replace("/", "_")
    rows: list[dict[str, Any]] = []
    for path in paths:
        check(path.exists(), "lottery source not found", str(path),
              "Give run folders (with imp/summary.json or imp/ticket_result.json) or lottery_science.json.")
        files = [path] if path.is_file() else sorted(path.rglob("lottery_science.json"))
        for f in files:
            found = json.loads(f.read_text()).get("rows", [])
            ticket_density = {(r["seed"], r.get("level")): r["density"] for r in found if r["mode"] == "imp"}
            for r in found:
                mode = "ticket" if r["mode"] == "imp" else r["mode"]
                # controls sit at their ticket's density (perturb_rest itself is a dense net)
                density = ticket_density.get((r["seed"], r.get("level")), r["density"])
                rows.append({"seed": r["seed"], "mode": mode, "level": r.get("level"),
                             "density": density, "acc": r.get(key, r.get(metric))})
        if path.is_file() or files:
            continue
        for summary in sorted(path.rglob("imp/summary.json")):
            run = summary.parent.parent
            seed = run_seed(run)
            for lv in json.loads(summary.read_text()).get("levels", []):
                rows.append({"seed": seed, "mode": "ticket", "level": lv["level"], "density": lv["density"],
                             "acc": lv.get(metric)})
        for result in sorted(path.rglob("imp/ticket_result.json")):
            run = result.parent.parent
            r = json.loads(result.read_text())
            rows.append({"seed": run_seed(run), "mode": r.get("mode", "ticket"), "level": None,
                         "density": r.get("ticket_density", r["density"]), "acc": r.get(metric)})
    rows = [r for r in rows if r["acc"] is not None]
    check(bool(rows), f"no lottery results with {metric!r} found", [str(p) for p in paths],
          "Run IMP (-c callbacks/imp.yaml) and its controls (-c callbacks/ticket.yaml) or "
          "scripts/lottery_science.py, and point this script at their folders.")
    return rows


def table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy per mode and density (densities rounded to 4 decimals to pool seeds)."""
    for r in rows:
        r["density_r"] = round(float(r["density"]), 3)
    curves = group_curves(rows, "density_r", "acc", by="mode")
    out = {}
    for mode, c in curves.items():
        out[mode] = {f"{d:g}": {"mean": float(m), "lo": float(lo), "hi": float(hi), "seeds": int(n)}
                     for d, m, lo, hi, n in zip(c["x"], c["mean"], c["lo"], c["hi"], c["n"], strict=True)}
    return {"curves": curves, "table": out, "seeds": len({r["seed"] for r in rows})}


def plot(result: dict[str, Any], out: Path, metric: str, title: str) -> Path:
    from matplotlib.figure import Figure

    curves = result["curves"]
    fig = Figure(figsize=(6.2, 4.0))
    ax = fig.subplots()
    order = ["ticket", "random_reinit", "random_mask", "perturb_rest"]
    modes = [m for m in order if m in curves] + sorted(set(curves) - set(order))
    for i, mode in enumerate(modes):
        c = curves[mode]
        ax.plot(c["x"], c["mean"], marker="os^dv"[i % 5], ms=4, color=f"C{i}", label=LABELS.get(mode, mode))
        if (c["n"] > 1).any():
            ax.fill_between(c["x"], c["lo"], c["hi"], color=f"C{i}", alpha=0.2, lw=0)
    if "ticket" in curves and curves["ticket"]["x"].max() >= 0.999:
        dense = float(curves["ticket"]["mean"][np.argmax(curves["ticket"]["x"])])
        ax.axhline(dense, color="k", ls=":", lw=1, label=f"dense ({dense:.3f})")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("density of the ticket (fraction of prunable weights kept)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"{title}\nmean of {result['seeds']} seed(s), band: min-max over seeds; controls at "
                 "their ticket's density", fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, out.with_suffix(".png"), dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", type=Path, nargs="+", help="run / sweep folders or lottery_science.json files")
    p.add_argument("--metric", default="test/acc", help="accuracy key (test/acc or val/acc)")
    p.add_argument("--out", type=Path, help="output path without suffix (default: FIRST_PATH/lottery)")
    p.add_argument("--title", default="Lottery tickets and controls")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = collect(args.paths, args.metric)
    except ConfigError as err:
        print(f"plot_lottery.py: error: {err}", file=sys.stderr)
        return 2
    result = table(rows)
    first = args.paths[0]
    out = args.out or ((first.parent if first.is_file() else first) / "lottery")
    png = plot(result, out, args.metric, args.title)
    atomic_write_json({"metric": args.metric, "table": result["table"]}, out.with_suffix(".json"))
    print(f"wrote {png}")
    print(json.dumps({"metric": args.metric, "table": result["table"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

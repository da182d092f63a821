"""Double-descent figure of a width sweep: train and test error against width.

Reads ``SWEEP/results.csv`` (written by ``scripts/sweep.py``) and draws, against the width key,
the train error on the (noisy) labels trained on, the clean test error and the test error on
noisy test labels, as the mean over seeds with a band from the lowest to the highest seed. The
top axis gives the parameter count; a dashed line marks the interpolation threshold, the first
width whose mean train error is at most ``--threshold`` (it fits the noisy training set).

Test numbers are ``test/*`` when the runs were tested, otherwise the last ``val/*`` (with
``val_size: 0`` the validation split is the test split). Writes ``OUT.png`` and ``OUT.json``
and prints the summary as one JSON line.

    python scripts/plot_double_descent.py runs/dd [--x model.init_args.width] [--out runs/dd/double_descent]
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

from overparam_lit.studies import group_curves, read_results  # noqa: E402
from overparam_lit.utils import ConfigError, atomic_savefig, atomic_write_json, check  # noqa: E402


def width_key(rows: list[dict[str, Any]], given: str | None) -> str:
    """The x column: ``given``, else a column ending in ``width``, else ``model/width``."""
    cols = list(rows[0]) if rows else []
    if given:
        check(given in cols, "x column not in results.csv", given, f"Choose one of {cols}.")
        return given
    for c in cols:
        if c.split(".")[-1] == "width" and c != "model/width":
            return c
    check("model/width" in cols, "no width column in results.csv", cols, "Pass --x COLUMN.")
    return "model/width"


def error(key: str) -> Any:
    return lambda r: None if r.get(key) is None else 1.0 - float(r[key])


def second_peak(widths: np.ndarray, err: np.ndarray, threshold_width: float | None) -> int:
    """Index of the double-descent peak: the local maximum of the test error (an interior width
    above both neighbours) nearest the interpolation threshold in log width; the global
    maximum when there is no interior maximum. (The error of the narrowest nets is high too,
    the classical regime, so the global maximum is not the peak in question.)"""
    inner = [i for i in range(1, len(err) - 1) if err[i] > err[i - 1] and err[i] >= err[i + 1]]
    if not inner:
        return int(np.argmax(err))
    if threshold_width is None:
        return max(inner, key=lambda i: err[i])
    return min(inner, key=lambda i: abs(np.log(widths[i]) - np.log(threshold_width)))


def summarise(rows: list[dict[str, Any]], x: str, threshold: float) -> dict[str, Any]:
    """Per-width means, the interpolation threshold and the test-error peak."""
    test = "test" if any(r.get("test/acc") is not None for r in rows) else "val"
    curves = {
        "train_error": group_curves(rows, x, error("train/acc")).get(None),
        "test_error": group_curves(rows, x, error(f"{test}/acc")).get(None),
        "test_error_noisy": group_curves(rows, x, error(f"{test}/acc_noisy")).get(None),
        "num_params": group_curves(rows, x, "model/num_params").get(None),
    }
    check(curves["train_error"] is not None and curves["test_error"] is not None,
          "results.csv has no finished points with train/acc and val/acc (or test/acc)",
          len(rows), "Run the sweep to completion first (python scripts/sweep.py ...).")
    tr, te = curves["train_error"], curves["test_error"]
    fitted = [w for w, e in zip(tr["x"], tr["mean"], strict=True) if e <= threshold]
    thr = float(fitted[0]) if fitted else None
    peak = second_peak(te["x"], te["mean"], thr)
    per_width = {}
    for i, w in enumerate(te["x"]):
        entry = {"test_error": float(te["mean"][i]), "seeds": int(te["n"][i])}
        for name in ("train_error", "test_error_noisy", "num_params"):
            c = curves[name]
            if c is not None and w in c["x"]:
                entry[name] = float(c["mean"][list(c["x"]).index(w)])
        per_width[f"{w:g}"] = entry
    left = te["mean"][: peak + 1]
    return {"x": x, "test_split": test, "threshold": threshold, "interpolation_width": thr,
            "peak_width": float(te["x"][peak]), "peak_test_error": float(te["mean"][peak]),
            "min_before_peak_width": float(te["x"][int(np.argmin(left))]),
            "min_before_peak_test_error": float(left.min()),
            "first_width_test_error": float(te["mean"][0]), "last_width_test_error": float(te["mean"][-1]),
            "per_width": per_width, "curves": curves}


def plot(summary: dict[str, Any], out: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    c = summary["curves"]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    styles = (("train_error", "train error (labels trained on)", "C0", "o"),
              ("test_error", "test error (clean labels)", "C3", "s"),
              ("test_error_noisy", "test error (noisy labels)", "C1", "^"))
    for name, label, color, marker in styles:
        if c[name] is None:
            continue
        ax.plot(c[name]["x"], c[name]["mean"], marker=marker, color=color, label=label, ms=4)
        if (c[name]["n"] > 1).any():
            ax.fill_between(c[name]["x"], c[name]["lo"], c[name]["hi"], color=color, alpha=0.2, lw=0)
    ax.annotate(f"peak {summary['peak_test_error']:.3f}", (summary["peak_width"], summary["peak_test_error"]),
                textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7, color="C3")
    if summary["interpolation_width"] is not None:
        ax.axvline(summary["interpolation_width"], color="grey", ls="--", lw=1,
                   label=f"interpolation threshold (train error <= {summary['threshold']:g})")
    ax.set_xscale("log")
    ax.set_xlabel(f"width ({summary['x']})")
    ax.set_ylabel("error")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    params = c["num_params"]
    if params is not None and len(params["x"]) > 1:
        lw, lp = np.log(params["x"]), np.log(params["mean"])

        def to_params(w: np.ndarray) -> np.ndarray:
            return np.exp(np.interp(np.log(np.clip(w, 1e-12, None)), lw, lp))

        def to_width(p: np.ndarray) -> np.ndarray:
            return np.exp(np.interp(np.log(np.clip(p, 1e-12, None)), lp, lw))

        top = ax.secondary_xaxis("top", functions=(to_params, to_width))
        top.set_xlabel("parameters")
    seeds = int(max(c["test_error"]["n"]))
    fig.suptitle(f"{title}\nmean of {seeds} seed(s), band: min-max over seeds", fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, out.with_suffix(".png"), dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="sweep folder holding results.csv")
    p.add_argument("--x", help="width column (default: the grid key ending in 'width')")
    p.add_argument("--threshold", type=float, default=0.01,
                   help="train error at or below which a width fits its training labels")
    p.add_argument("--out", type=Path, help="output path without suffix (default: SWEEP/double_descent)")
    p.add_argument("--title", default="Double descent in width")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = [r for r in read_results(args.sweep) if r.get("status") == "done"]
        check(bool(rows), "no finished points in results.csv", str(args.sweep),
              "Run or finish the sweep first (python scripts/sweep.py ...).")
        summary = summarise(rows, width_key(rows, args.x), args.threshold)
    except ConfigError as err:
        print(f"plot_double_descent.py: error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.sweep / "double_descent"
    png = plot(summary, out, args.title)
    small = {k: v for k, v in summary.items() if k != "curves"}
    atomic_write_json(small, out.with_suffix(".json"))
    print(f"wrote {png}")
    print(json.dumps(small))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading run folders and sweep results tables (CSV in, numbers out; no Lightning).

A run folder (``--trainer.default_root_dir``) holds ``metrics.csv`` from the CSV logger: one
row per logging step, one column per metric key, empty where a key was not logged that step.
The *final* value of a key is its last non-empty entry; for ``val/*`` that is the last
validation epoch (with ``val_size: 0`` the validation split is the clean test set).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.members_table import final_rows, number
from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.grid import parse_value
from overparam_lit.utils import check, read_csv_rows

RESULTS_FILE = "results.csv"


def require_dir(path: str | Path, what: str, needs: Iterable[str] = ()) -> Path:
    """The folder ``path``, or a :class:`ConfigError` naming it and what it should hold.

    Args:
        path: the folder.
        what: what the folder is (for the message), e.g. ``"sweep folder"``.
        needs: names of which at least one must exist inside (glob patterns allowed).
    """
    path = Path(path)
    check(path.is_dir(), f"{what} not found", str(path), "Give an existing folder (a finished run or sweep).")
    needs = list(needs)
    if needs:
        found = any(any(path.glob(n)) for n in needs)
        check(found, f"{what} holds none of {needs}", str(path),
              "Point the script at the folder a sweep or run wrote, or run it first.")
    return path


def read_metrics_csv(run: str | Path) -> list[dict[str, float]]:
    """``run/metrics.csv`` as a list of ``{key: float}`` rows (empty cells left out)."""
    rows = read_csv_rows(RunFolder(run).metrics_csv)
    out = []
    for row in rows:
        parsed = {k: v for k, v in ((k, number(v)) for k, v in row.items() if k) if v is not None}
        out.append(parsed)
    return out


def series(rows: list[dict[str, float]], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays of every row where ``key`` (and ``x``) were logged."""
    pts = [(r[x], r[key]) for r in rows if key in r and x in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    arr = np.array(pts, dtype=float)
    return arr[:, 0], arr[:, 1]


def final_metrics(run: str | Path) -> dict[str, float]:
    """Last logged value of every metric of a run folder, plus ``epoch`` and ``step`` of the
    last training or validation row (the test split evaluated after fit does not move them),
    and the numbers of ``imp/ticket_result.json`` (as ``ticket/<key>``) if present.
    A fit resumed in the same folder continues ``metrics.csv`` from its checkpoint, so the rows
    read as one uninterrupted fit."""
    folder = RunFolder(run)
    out: dict[str, float] = {}
    for row in folder.read_metrics():
        values = {k: v for k, v in ((k, number(v)) for k, v in row.items() if k) if v is not None}
        if any(k.startswith("test/") for k in values):  # the test split after fit: epoch = epochs done
            values.pop("epoch", None)
            values.pop("step", None)
        out.update(values)
    ticket = folder.ticket_result
    if ticket.is_file():
        data = json.loads(ticket.read_text())
        out.update({f"ticket/{k}": float(v) for k, v in data.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def run_summary(run: str | Path) -> dict[str, float]:
    """Final and best values of a run's ``metrics.csv``, for W&B summaries and the end-of-fit report.

    For each split (``train``, ``val``, ``test``) with logged values: ``final/<split>_loss``,
    ``final/<split>_acc`` and ``final/<split>_error`` (1 - acc) from the last logged value;
    for ``val`` and ``test`` also ``best/<split>_acc`` (max), ``best/<split>_error`` and
    ``best/<split>_loss`` (min), and ``best/val_epoch`` (epoch of the best val accuracy, else of
    the lowest val loss).
    """
    rows = read_metrics_csv(run) if RunFolder(run).metrics_csv.is_file() else []
    out: dict[str, float] = {}
    for split in ("train", "val", "test"):
        for metric in ("loss", "acc"):
            values = [r[f"{split}/{metric}"] for r in rows if f"{split}/{metric}" in r]
            if not values:
                continue
            out[f"final/{split}_{metric}"] = values[-1]
            if metric == "acc":
                out[f"final/{split}_error"] = 1.0 - values[-1]
            if split == "train":
                continue
            best = max(values) if metric == "acc" else min(values)
            out[f"best/{split}_{metric}"] = best
            if metric == "acc":
                out[f"best/{split}_error"] = 1.0 - best
    val = [r for r in rows if "val/acc" in r or "val/loss" in r]
    if val:
        key, pick = ("val/acc", max) if any("val/acc" in r for r in val) else ("val/loss", min)
        best_row = pick((r for r in val if key in r), key=lambda r: r[key])
        if "epoch" in best_row:
            out["best/val_epoch"] = best_row["epoch"]
    return out


def member_finals(run: str | Path) -> list[dict[str, Any]]:
    """One row per member of a run: ``member``, ``seed``, ``width``, ``num_params``, the last
    ``epoch`` and ``step`` trained, the last logged value of every metric (``train/*``, ``val/*``,
    ``test/*``) and ``best/val_acc`` (the highest validation accuracy of any epoch).

    A members fit is read from ``members.csv``; a single model gives one row (member 0) from
    ``metrics.csv``, with the seed of its ``config.yaml`` and its logged ``model/width``.
    """
    folder = RunFolder(run)
    rows = folder.read_members()
    if not rows:
        if not folder.metrics_csv.is_file():
            return []
        final = final_metrics(run)
        summary = run_summary(run)
        row: dict[str, Any] = {"member": 0, "seed": run_seed(run), "width": run_width(run),
                               "num_params": final.get("model/num_params")}
        row.update({k: v for k, v in final.items() if k.split("/")[0] in ("train", "val", "test")
                    or k in ("epoch", "step")})
        if "best/val_acc" in summary:
            row["best/val_acc"] = summary["best/val_acc"]
        for key in ("width", "num_params", "epoch", "step"):
            if isinstance(row.get(key), float) and float(row[key]).is_integer():
                row[key] = int(row[key])
        return [row]
    return final_rows(rows)


def write_results(path: str | Path, rows: list[dict[str, Any]], first: list[str]) -> Path:
    """Write ``rows`` as CSV: the columns ``first`` in order, then every other key sorted."""
    path = Path(path)
    keys = list(first) + sorted({k for r in rows for k in r} - set(first))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    tmp.replace(path)
    return path


RESULT_COLUMNS = ("fit", "status")
"""Columns every ``results.csv`` of ``overparam-lit sweep`` has."""


def read_results(sweep: str | Path) -> list[dict[str, Any]]:
    """The rows of ``sweep/results.csv`` with numbers parsed (empty cells are ``None``); a
    :class:`ConfigError` that says how to rewrite the file when it is not the table
    ``overparam-lit sweep`` writes (not text, not CSV, columns missing)."""
    sweep = require_dir(sweep, "sweep folder", [RESULTS_FILE])
    fix = (f"Rewrite it from the fits' folders with `overparam-lit sweep --out {sweep} --collect` "
           "(finished fits are kept).")
    rows = []
    for row in read_csv_rows(sweep / RESULTS_FILE, RESULTS_FILE, fix, RESULT_COLUMNS):
        rows.append({k: (None if v == "" else parse_value(v)) for k, v in row.items()})
    return rows


def group_curves(rows: list[dict[str, Any]], x: str, y: str | Callable[[dict[str, Any]], float | None],
                 by: str | None = None) -> dict[Any, dict[str, np.ndarray]]:
    """Mean and band of ``y`` against ``x`` over the rows that share ``x`` (seeds, usually).

    Args:
        rows: table rows.
        x: column of the x axis.
        y: column, or a function of a row (``None`` where undefined).
        by: optional column whose values make separate curves.

    Returns:
        ``{group: {"x", "mean", "lo", "hi", "std", "n"}}``; ``lo``/``hi`` are the min and max
        over the rows at each x (the band drawn around the mean).
    """
    get = y if callable(y) else (lambda r: r.get(y))  # noqa: E731
    groups: dict[Any, dict[float, list[float]]] = {}
    for r in rows:
        xv, yv = r.get(x), get(r)
        if xv is None or yv is None or (isinstance(yv, float) and math.isnan(yv)):
            continue
        groups.setdefault(r.get(by) if by else None, {}).setdefault(float(xv), []).append(float(yv))
    out = {}
    for g, pts in groups.items():
        xs = np.array(sorted(pts))
        vals = [np.array(pts[v]) for v in xs]
        out[g] = {"x": xs, "mean": np.array([v.mean() for v in vals]),
                  "lo": np.array([v.min() for v in vals]),
                  "hi": np.array([v.max() for v in vals]), "std": np.array([v.std() for v in vals]),
                  "n": np.array([len(v) for v in vals])}
    return out


def find_runs(paths: Iterable[str | Path], marker: str, what: str) -> list[Path]:
    """Run folders under ``paths`` (runs themselves, sweep folders, any parent) that hold
    ``marker`` (e.g. ``"hessian"``); a :class:`ConfigError` when a path is missing or none do."""
    runs: list[Path] = []
    paths = [Path(p) for p in paths]
    for path in paths:
        check(path.is_dir(), "run folder not found", str(path), "Give run or sweep folders that exist.")
        if (path / marker).exists():
            runs.append(path)
            continue
        runs += sorted(p.parent for p in path.rglob(marker) if RunFolder(p.parent).metrics_csv.exists()
                       or RunFolder(p.parent).config_yaml.exists())
    check(bool(runs), f"no run folder with {marker}/ found", [str(p) for p in paths],
          f"Run with the {what} callback (-c callbacks/{what}.yaml) and give its run or sweep folder.")
    return sorted(set(runs))


def run_config(run: str | Path) -> dict[str, Any]:
    """``config.yaml`` of a run folder as a dictionary (empty if missing or unreadable)."""
    return RunFolder(run).read_config()


def run_width(run: str | Path) -> float | None:
    """``model.init_args.width`` of a run (from ``config.yaml``), else ``model/width`` logged."""
    model = run_config(run).get("model") or {}
    width = (model.get("init_args") or {}).get("width", model.get("width"))
    if isinstance(width, (int, float)):
        return float(width)
    if RunFolder(run).metrics_csv.is_file():
        return final_metrics(run).get("model/width")
    return None


def run_seed(run: str | Path) -> int | None:
    """``seed_everything`` of a run's ``config.yaml``."""
    seed = run_config(run).get("seed_everything")
    return seed if isinstance(seed, int) else None


def run_label(run: str | Path) -> str:
    """Short label: ``width W, seed S`` when known, else the folder name."""
    w, s = run_width(run), run_seed(run)
    if w is None:
        return Path(run).name
    return f"width {w:g}" + (f", seed {s}" if s is not None else "")

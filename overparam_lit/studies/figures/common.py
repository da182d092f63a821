"""What every figure shares: member tables, output paths, writing the picture and its numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.results import member_finals, run_config
from overparam_lit.studies.runs import SweepFolder, run_folders
from overparam_lit.utils import atomic_savefig, atomic_write_json, check


def member_table(source: str | Path) -> list[dict[str, Any]]:
    """One row per member with its final metrics: the finished rows of a sweep's ``results.csv``,
    or, for a run folder (or a folder of runs), :func:`~overparam_lit.studies.results.member_finals`
    of every run (with ``fit`` set to the run folder's name)."""
    source = Path(source)
    sweep = SweepFolder(source)
    if sweep.results.is_file():
        rows = [r for r in sweep.results_rows() if r.get("status") == "done"]
        check(bool(rows), "the sweep has no finished fits in results.csv", str(sweep.results),
              "Let `overparam-lit sweep` finish (or rerun it), then plot.")
        return rows
    rows = []
    for run in run_folders(source):
        for row in member_finals(run):
            rows.append({"fit": run.name, "folder": str(run), "status": "done", **row})
    check(bool(rows), "no run folder with metrics found", str(source),
          "Give a sweep folder or run folders written by `overparam-lit fit`.")
    return rows


def fit_folders(source: str | Path, marker: str | None = None) -> list[Path]:
    """The run folders of ``source`` (see :func:`~overparam_lit.studies.runs.run_folders`)."""
    return run_folders(source, marker)


def output_path(source: str | Path, name: str, out: str | Path | None) -> Path:
    """``out`` (a ``.png`` path), else ``SOURCE/figures/<name>.png``."""
    if out is not None:
        out = Path(out)
        return out if out.suffix else out.with_suffix(".png")
    return SweepFolder(source).figure(name)


def titled(fig: Any, title: str, grid: Any = (), fontsize: int = 10) -> Any:
    """Light grids on the ``grid`` axes, the figure's title, a tight layout; returns ``fig``."""
    for ax in grid:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    return fig


def finish(fig: Any, summary: dict[str, Any], png: Path) -> dict[str, Any]:
    """Save the picture and ``summary`` as JSON next to it (``<png>.json`` with the suffix
    replaced); returns the summary with ``figure`` set to the picture's path."""
    summary = {**summary, "figure": str(png)}
    atomic_savefig(fig, png, dpi=110)
    atomic_write_json(jsonable(summary), png.with_suffix(".json"))
    return jsonable(summary)


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into plain numbers and lists, and
    non-finite floats into ``None`` (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def num(value: Any) -> float | None:
    """A finite float, or ``None``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def key_of(width: Any) -> str:
    """A width or density as a JSON key (``16``, ``0.185``)."""
    return f"{float(width):g}"


def data_init_args(run: str | Path) -> tuple[str, dict[str, Any]]:
    """``(data class path, init_args)`` of a run's ``config.yaml``."""
    data = run_config(run).get("data") or {}
    return str(data.get("class_path", "")), dict(data.get("init_args") or {})


def describe(source: str | Path) -> str:
    """A short description of the runs for a title: model and data classes, width family settings
    and label noise of the first run's ``config.yaml`` (e.g. ``MLP (depth 2) on MNIST1D, 15% label
    noise``); empty when unknown."""
    runs = run_folders(source)
    if not runs:
        return ""
    cfg = run_config(runs[0])
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    margs, dargs = model.get("init_args") or {}, data.get("init_args") or {}
    text = str(model.get("class_path", "")).rsplit(".", 1)[-1]
    if "depth" in margs:
        text += f" (depth {margs['depth']})"
    text += " on " + str(data.get("class_path", "")).rsplit(".", 1)[-1]
    noise = dargs.get("label_noise")
    if isinstance(noise, (int, float)) and noise > 0:
        text += f", {noise:.0%} label noise"
    return text


def folder_of(row: dict[str, Any], source: str | Path) -> Path:
    """The run folder of a member row (``folder`` column, else the sweep's ``points/<fit>``)."""
    if row.get("folder"):
        return Path(row["folder"])
    sweep = SweepFolder(source)
    spec = {f["name"]: f["folder"] for f in sweep.read_spec().get("fits", [])}
    return Path(spec.get(row["fit"], sweep.fit_dir(str(row["fit"]))))


__all__ = ["RunFolder", "data_init_args", "describe", "finish", "fit_folders", "folder_of", "jsonable",
           "key_of", "member_table", "num", "output_path"]

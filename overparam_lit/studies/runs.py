"""Reading sweep folders and the study artifacts of run folders (no Lightning).

:class:`SweepFolder` names every file ``overparam-lit sweep`` writes; the ``*_rows`` functions
turn a run folder's artifacts into flat rows, one per member (a single model is member 0):
IMP levels (``imp/summary.json``), ticket results (``imp/ticket_result.json``), Hessian probes
(``hessian/probe_step*.npz``), decision-region snapshots (``regions/history.json``) and the
widening record (``widen/widen.json``). Every run-folder path comes from
:class:`~overparam_lit.runfolder.RunFolder`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.results import RESULTS_FILE, read_results, run_seed, run_width
from overparam_lit.utils import ConfigError, check

__all__ = ["SweepFolder", "epoch_losses", "hessian_rows", "imp_rows", "regions_rows",
           "run_folders", "run_num_classes", "ticket_rows", "widen_record"]


class SweepFolder:
    """Names the files of a sweep folder (``overparam-lit sweep --out DIR``)::

        sweep.json          the plan: configs, options and every fit with its arguments
        results.csv         one row per member of every fit: grid values, status, final metrics
        fits.csv            one row per fit: stage, status, members, attempts, seconds, command
        points/<fit>/       the run folder of each fit
        logs/<fit>.attemptN.log, logs/<fit>.failed.json
        slurm/              submitit's job files (--executor slurm)
        wandb_sweep*.yaml   W&B sweep files (--wandb-sweep)
        figures/<figure>.png, figures/<figure>.json   overparam-lit plot
        report.html         overparam-lit report
        sweep.lock          held while a sweep runs (a second sweep on the folder is refused)

    Args:
        root: the sweep folder.
    """

    SPEC = "sweep.json"
    RESULTS = RESULTS_FILE
    FITS = "fits.csv"
    POINTS = "points"
    LOGS = "logs"
    SLURM = "slurm"
    FIGURES = "figures"
    REPORT = "report.html"
    LOCK = "sweep.lock"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def spec(self) -> Path:
        """``sweep.json``."""
        return self.root / self.SPEC

    @property
    def results(self) -> Path:
        """``results.csv``."""
        return self.root / self.RESULTS

    @property
    def fits(self) -> Path:
        """``fits.csv``."""
        return self.root / self.FITS

    @property
    def points(self) -> Path:
        """``points/``."""
        return self.root / self.POINTS

    def fit_dir(self, name: str) -> Path:
        """``points/<name>/``: a fit's run folder."""
        return self.points / name

    def log(self, name: str, attempt: int) -> Path:
        """``logs/<name>.attempt<N>.log``."""
        return self.root / self.LOGS / f"{name}.attempt{attempt}.log"

    def logs_of(self, name: str) -> list[Path]:
        """Existing attempt logs of a fit, oldest first."""
        folder = self.root / self.LOGS
        if not folder.is_dir():
            return []
        return sorted(folder.glob(f"{name}.attempt*.log"), key=lambda p: int(p.stem.rsplit("attempt", 1)[1]))

    def failed(self, name: str) -> Path:
        """``logs/<name>.failed.json``: why a fit failed."""
        return self.root / self.LOGS / f"{name}.failed.json"

    @property
    def slurm(self) -> Path:
        """``slurm/``: submitit's folder."""
        return self.root / self.SLURM

    def wandb_sweep(self, stage: str | None = None) -> Path:
        """``wandb_sweep.yaml`` (first stage) or ``wandb_sweep_<stage>.yaml``."""
        return self.root / ("wandb_sweep.yaml" if stage is None else f"wandb_sweep_{stage}.yaml")

    def figure(self, name: str, suffix: str = ".png") -> Path:
        """``figures/<name><suffix>``."""
        return self.root / self.FIGURES / f"{name}{suffix}"

    @property
    def report(self) -> Path:
        """``report.html``."""
        return self.root / self.REPORT

    def is_sweep(self) -> bool:
        """True when the folder holds a sweep's ``sweep.json``."""
        return self.spec.is_file()

    @property
    def lock_file(self) -> Path:
        """``sweep.lock``: held while an ``overparam-lit sweep`` runs in the folder."""
        return self.root / self.LOCK

    def read_spec(self) -> dict[str, Any]:
        """``sweep.json`` (empty when missing); a :class:`ConfigError` that says how to restore it
        when it is not text, not JSON, or not a sweep's plan."""
        path = self.spec
        if not path.exists():
            return {}
        got = f"(got {str(path)!r})"
        fix = ("Restore the file, or delete it and rerun the sweep that wrote it with its config "
               f"(`overparam-lit sweep -c CONFIG --out {self.root}`): finished fits are kept.")
        try:
            spec = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"sweep.json is not text (byte {err.start} is not UTF-8) {got}. "
                              + fix) from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"sweep.json is not valid JSON: {err.msg} at line {err.lineno}, column "
                              f"{err.colno} {got}. {fix}") from None
        except OSError as err:
            raise ConfigError(f"sweep.json cannot be read: {err.strerror or err} {got}. {fix}") from None
        fits = spec.get("fits", []) if isinstance(spec, dict) else None
        plan = isinstance(fits, list) and all(isinstance(f, dict) and {"folder", "name"} <= set(f)
                                              for f in fits)
        check(plan, "sweep.json does not hold a sweep's plan (an object whose 'fits' each name a folder)",
              str(path), fix)
        return spec

    def fit_folders(self) -> list[Path]:
        """Run folders of the sweep's fits (those that exist), in plan order."""
        fits = self.read_spec().get("fits", [])
        return [Path(f["folder"]) for f in fits if Path(f["folder"]).is_dir()]

    def results_rows(self) -> list[dict[str, Any]]:
        """``results.csv`` rows with numbers parsed."""
        return read_results(self.root)


def run_folders(source: str | Path, marker: str | None = None) -> list[Path]:
    """Run folders of ``source``: the fits of a sweep folder, ``source`` itself when it is a run,
    or every run folder below it; with ``marker`` (``imp``, ``hessian``, ``regions``, ...) only
    those holding that artifact folder. Sorted by path."""
    source = Path(source)
    check(source.is_dir(), "run or sweep folder not found", str(source),
          "Give a folder that `overparam-lit sweep` or `overparam-lit fit` wrote.")
    sweep = SweepFolder(source)
    if sweep.is_sweep():
        runs = sweep.fit_folders()
    elif RunFolder(source).config_yaml.is_file() or RunFolder(source).metrics_csv.is_file():
        runs = [source]
    else:
        runs = sorted({p.parent for pattern in ("config.yaml", "metrics.csv") for p in source.rglob(pattern)
                       if not any(part.startswith(".") for part in p.relative_to(source).parts)})
    if marker is not None:
        runs = [r for r in runs if (RunFolder(r).root / marker).is_dir()]
    return sorted(set(runs))


# ---- IMP and tickets ---------------------------------------------------------------------------
def _members(record: dict[str, Any]) -> list[dict[str, Any]]:
    return record.get("members") or [{"member": 0, **{k: v for k, v in record.items() if k != "members"}}]


def imp_rows(run: str | Path) -> list[dict[str, Any]]:
    """One row per IMP level and member of ``imp/summary.json``: ``level``, ``density`` (the
    member's), ``member``, ``seed``, ``width`` and the level's final metrics (``test/acc``,
    ``val/acc``, ``train/loss``, ...) and best ones (``best_val/acc``)."""
    folder = RunFolder(run)
    if not folder.imp_summary.is_file():
        return []
    seed, width = run_seed(run), run_width(run)
    rows = []
    for level in folder.read_json(folder.imp_summary).get("levels", []):
        for m in _members(level):
            row = {"run": str(run), "level": int(level["level"]), "seed": seed, "width": width, **m}
            row["level_density"] = float(level["density"])
            rows.append(row)
    return rows


def ticket_rows(run: str | Path) -> list[dict[str, Any]]:
    """One row per member of ``imp/ticket_result.json``: the control's ``mode``, ``sigma``,
    ``level`` of its ticket (from the ticket's ``metrics.json``), ``ticket_density`` and the final
    metrics (``test/acc``, ``val/acc``, ``train/loss`` when evaluated), plus ``best/val_acc``
    from ``members.csv`` (or ``metrics.csv``) where logged."""
    folder = RunFolder(run)
    if not folder.ticket_result.is_file():
        return []
    result = folder.read_json(folder.ticket_result)
    meta = result.get("ticket_meta") or {}
    from overparam_lit.studies.results import member_finals

    best = {int(r["member"]): r.get("best/val_acc") for r in member_finals(run)}
    common = {"run": str(run), "mode": result.get("mode"), "sigma": result.get("sigma"),
              "level": meta.get("level"), "ticket": result.get("ticket"),
              "density": result.get("density"), "ticket_density": result.get("ticket_density")}
    rows = []
    seed, width = run_seed(run), run_width(run)
    for m in _members(result):
        row = {"seed": seed, "width": width, **{k: v for k, v in m.items() if k not in common}, **common}
        row["best/val_acc"] = best.get(int(row.get("member", 0)))
        rows.append(row)
    return rows


# ---- Hessian probes ----------------------------------------------------------------------------
def epoch_losses(run: str | Path, key: str = "train/loss") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per member, ``(steps, values)`` of an epoch-mean metric placed at the middle step of its
    epoch (from ``members.csv``, or ``metrics.csv`` for a single model as member 0)."""
    folder = RunFolder(run)
    rows = folder.read_members()
    if not rows:
        rows = [{**r, "member": "0"} for r in folder.read_metrics()]
    out: dict[int, list[tuple[float, float]]] = {}
    ends: dict[int, float] = {}
    for r in rows:
        if r.get(key) in (None, "") or r.get("epoch") in (None, "") or r.get("step") in (None, ""):
            continue
        ends[int(float(r["epoch"]))] = float(r["step"])
        out.setdefault(int(r["member"]), []).append((float(r["epoch"]), float(r[key])))
    per_epoch = np.diff([0.0] + [ends[e] for e in sorted(ends)])
    span = float(np.median(per_epoch)) if per_epoch.size else 1.0
    result = {}
    for member, pts in out.items():
        steps = np.array([ends[int(e)] - span / 2 for e, _ in pts])
        result[member] = (steps, np.array([v for _, v in pts]))
    return result


def run_num_classes(run: str | Path) -> int | None:
    """``num_classes`` of a run's ``hparams.yaml`` (linked from its data module), or ``None``."""
    import yaml

    path = RunFolder(run).hparams_yaml
    if path.is_file():
        n = (yaml.safe_load(path.read_text()) or {}).get("num_classes")
        if isinstance(n, int):
            return n
    return None


def _member_value(arr: np.ndarray, i: int, members: int | None) -> Any:
    """Member ``i``'s entry of an array with a leading member axis (the array itself otherwise)."""
    return arr[i] if members is not None and arr.ndim >= 1 and arr.shape[0] == members else arr


def hessian_rows(run: str | Path) -> list[dict[str, Any]]:
    """One row per Hessian probe and member of ``hessian/probe_step*.npz``, sorted by step:
    ``member``, ``seed``, ``width``, ``step``, ``epoch``, ``lambda_max``, ``lambda_min``,
    ``lambda_min_bound``, ``negative_fraction``, ``trace``, ``top`` (the top-k eigenvalues),
    ``density_grid`` / ``density`` where saved, ``num_classes``, and ``loss``: the probe's own
    loss where the probe saved one (``loss_source`` ``"probe"``), else the member's epoch-mean
    training loss interpolated at the probe's step (``"train_epoch_mean"``)."""
    run = Path(run)
    folder = RunFolder(run)
    files = sorted(folder.hessian.glob("probe_step*.npz")) if folder.hessian.is_dir() else []
    losses: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
    classes = run_num_classes(run)
    rows = []
    for f in files:
        with np.load(f) as z:
            data = {k: np.asarray(z[k]) for k in z.files}
        stacked = "member_seed" in data
        count = len(data["member_seed"]) if stacked else 1
        step = int(data["step"]) if "step" in data else int(f.stem.removeprefix("probe_step"))
        members = count if stacked else None
        for i in range(count):
            row: dict[str, Any] = {"run": str(run), "member": i, "step": step,
                                   "epoch": int(data["epoch"]) if "epoch" in data else None,
                                   "seed": int(data["member_seed"][i]) if stacked else run_seed(run),
                                   "width": int(data["member_width"][i]) if stacked else run_width(run),
                                   "num_classes": classes}
            for key in ("lambda_max", "lambda_min", "lambda_min_bound", "negative_fraction", "trace", "loss"):
                if key in data:
                    row[key] = float(_member_value(data[key], i, members))
            top = np.asarray(_member_value(data["top"], i, members) if "top" in data else [], dtype=float)
            row["top"] = top[np.isfinite(top)]
            if "density" in data:
                row["density_grid"] = np.asarray(data["density_grid"], dtype=float)
                row["density"] = np.asarray(_member_value(data["density"], i, members), dtype=float)
            if "loss" in row:
                row["loss_source"] = "probe"
            else:
                if losses is None:
                    losses = epoch_losses(run)
                curve = losses.get(i)
                if curve is not None and curve[0].size:
                    row["loss"] = float(np.interp(step, curve[0], curve[1]))
                    row["loss_source"] = "train_epoch_mean"
            rows.append(row)
    return sorted(rows, key=lambda r: (r["member"], r["step"]))


# ---- decision regions ---------------------------------------------------------------------------
def regions_rows(run: str | Path) -> list[dict[str, Any]]:
    """One row per decision-region snapshot and member of ``regions/history.json``: ``epoch``,
    ``step``, ``member``, ``seed``, ``width``, ``maps`` (the snapshot's file), ``bank`` and the
    ``regions/*`` numbers (the member's own for members fits)."""
    folder = RunFolder(run)
    if not folder.regions_history.is_file():
        return []
    history = folder.read_json(folder.regions_history)
    bank = history.get("bank")
    rows = []
    for snap in history.get("snapshots", []):
        common = {"run": str(run), "epoch": snap.get("epoch"), "step": snap.get("step"),
                  "maps": snap.get("maps"), "bank": bank}
        members = snap.get("members")
        if not members:
            rows.append({**common, "member": 0, "seed": run_seed(run), "width": run_width(run),
                         **{k: v for k, v in snap.items() if k.startswith("regions/")}})
            continue
        for i, m in enumerate(members):
            row = {**common, "member": m.get("member", i), "seed": m.get("seed"), "width": m.get("width")}
            row.update({k if k.startswith("regions/") else f"regions/{k}": v for k, v in m.items()
                        if k not in ("member", "seed", "width", "num_params")})
            rows.append(row)
    return rows


# ---- widening ------------------------------------------------------------------------------------
def widen_record(run: str | Path) -> dict[str, Any] | None:
    """The Widen callback's record (``widen/widen.json``), or ``None`` when the run did not widen."""
    path = RunFolder(run).widen_json
    return json.loads(path.read_text()) if path.is_file() else None

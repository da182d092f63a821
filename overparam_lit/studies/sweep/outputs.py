"""The files a sweep writes besides its fits' run folders: ``sweep.json`` (the plan),
``results.csv`` (one row per member), ``fits.csv`` (one row per fit) and W&B sweep files."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import yaml

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.grid import cli_text
from overparam_lit.studies.results import member_finals, write_results
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.spec import SEED_KEY, WIDTH_KEYS, Fit, Plan, StageSpec, StudySpec
from overparam_lit.utils import atomic_write_json


class SweepOutputs:
    """Writing ``sweep.json``, ``results.csv``, ``fits.csv`` and the W&B sweep files. Part of
    :class:`~overparam_lit.studies.sweep.planned.Sweep`."""

    args: argparse.Namespace
    folder: SweepFolder
    plan: Plan
    spec: StudySpec
    _attempts: dict[str, int]

    def write_spec(self) -> None:
        """Write ``sweep.json``: options, configs and every fit."""
        a = self.args
        atomic_write_json({
            "name": self.plan.name, "figure": self.spec.figure, "configs": self.plan.configs,
            "options": {"configs": a.config, "set": a.fixed, "grid": a.grid, "pack": a.pack,
                        "width_groups": a.width_groups, "name": a.name},
            "stages": [s.name for s in self.spec.stages], "fits": [f.record() for f in self.plan.fits],
        }, self.folder.spec)

    def collect(self) -> list[dict[str, Any]]:
        """Write ``results.csv`` (one row per member) and ``fits.csv`` (one row per fit)."""
        rows, fit_rows = [], []
        grid_keys: list[str] = []
        for stage in self.spec.stages:
            grid_keys += [k for k in stage.keys if k not in grid_keys]
        for fit in self.plan.fits:
            status = self.status(fit)
            done = RunFolder(fit.folder).read_done() if status == "done" else None
            extra = {"attempts": (done or {}).get("attempts", self._attempts.get(fit.name)),
                     "seconds": (done or {}).get("seconds")}
            fit_rows.append({"stage": fit.stage, "fit": fit.name, "status": status,
                             "members": fit.num_members, **extra, "folder": str(fit.folder),
                             "command": shlex.join(self.plan.command(fit))})
            members = member_finals(fit.folder) if fit.folder.is_dir() else []
            if not members:
                members = [{"member": i, "seed": s, "width": w} for i, (w, s) in enumerate(
                    (w, s) for w in (fit.widths or [self._value(fit, WIDTH_KEYS)])
                    for s in (fit.seeds or [self._value(fit, (SEED_KEY,))]))]
            for m in members:
                row: dict[str, Any] = {"stage": fit.stage, "fit": fit.name}
                row.update({k: cli_text(v) if isinstance(v, (list, dict)) else v
                            for k, v in fit.values.items()})
                if fit.seeds is not None:
                    row[SEED_KEY] = m.get("seed")
                if fit.widths is not None:
                    row[next(k for k in WIDTH_KEYS if k in self._stage(fit).keys)] = m.get("width")
                row.update(status=status, **extra)
                row.update(m)
                rows.append(row)
        self.folder.root.mkdir(parents=True, exist_ok=True)
        first = ["stage", "fit", "member", "seed", "width", "num_params", *grid_keys, "status", "attempts",
                 "seconds", "epoch", "step"]
        write_results(self.folder.results, rows, first)
        write_results(self.folder.fits, fit_rows, ["stage", "fit", "status", "members", "attempts", "seconds",
                                                  "folder", "command"])
        return rows

    def _stage(self, fit: Fit) -> StageSpec:
        return self.spec.stage(fit.stage)

    def _value(self, fit: Fit, keys: tuple[str, ...]) -> Any:
        return next((fit.values[k] for k in keys if k in fit.values), None)

    def write_wandb_sweeps(self) -> list[Path]:
        """One W&B grid sweep file per stage: each run is ``overparam-lit sweep ... --fit NAME``."""
        base = ["${env}", "${interpreter}", "-m", "overparam_lit", "sweep"]
        for cfg in self.plan.configs:
            base += ["-c", str(Path(cfg).resolve())]
        for item in self.args.fixed:
            base += ["--set", item]
        for item in self.args.grid:
            base += ["--grid", item]
        if self.args.pack:
            base += ["--pack", self.args.pack]
        if self.args.width_groups:
            base += ["--width-groups", self.args.width_groups]
        base += ["--out", str(self.folder.root.resolve()), "--name", self.plan.name, "--workers", "1"]
        paths = []
        for i, stage in enumerate(self.spec.stages):
            names = [f.name for f in self.plan.fits if f.stage == stage.name]
            spec = {"name": self.plan.name if i == 0 else f"{self.plan.name}-{stage.name}", "method": "grid",
                    "parameters": {"fit": {"values": names}}, "command": [*base, "${args}"]}
            path = self.folder.wandb_sweep(None if i == 0 else stage.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            after = "" if i == 0 else f" after the '{self.spec.stages[i - 1].name}' sweep finished"
            header = (f"# W&B grid sweep of stage '{stage.name}' of {self.plan.name} ({len(names)} fits)"
                      f"{after}:\n#   wandb sweep {path}   then on each machine:   "
                      "wandb agent <entity/project/sweep id>\n"
                      "# Each W&B run is `overparam-lit sweep ... --fit NAME`: one fit, skipped when done,\n"
                      "# resumed when interrupted, in the sweep folder named by --out.\n")
            path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
            paths.append(path)
        return paths

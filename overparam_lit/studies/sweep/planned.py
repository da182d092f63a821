"""A planned sweep: the study's plan with the command line's options, the status of each fit, the
sweep folder's lock, and the run of the fits (locally or on SLURM) followed by the results."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from typing import Any

import yaml

from overparam_lit.runfolder import RunFolder
from overparam_lit.stopping import REQUEUE_EXIT_CODE
from overparam_lit.studies.grid import parse_grid_arg, parse_set_arg
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.spec import (
    MAIN,
    Axis,
    Fit,
    Plan,
    StageSpec,
    StudySpec,
    make_plan,
    parse_width_groups,
    read_study,
)
from overparam_lit.studies.sweep.folder import SweepLock, resume_args
from overparam_lit.studies.sweep.fork_server import _FitServer, fork_available
from overparam_lit.studies.sweep.local import LocalPool, visible_gpus
from overparam_lit.studies.sweep.outputs import SweepOutputs
from overparam_lit.studies.sweep.preflight import Preflight
from overparam_lit.studies.sweep.slurm import SlurmJobs, _slurm_option
from overparam_lit.utils import check


class Sweep(Preflight, SweepOutputs, LocalPool, SlurmJobs):
    """A planned sweep (see :mod:`overparam_lit.studies.sweep`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.folder = SweepFolder(args.out)
        saved = self.folder.read_spec().get("options") if not args.config else None
        if saved:  # `overparam-lit sweep --out DIR --collect` (or a rerun) reuses the saved options
            args.config, args.fixed, args.grid = saved["configs"], saved["set"], saved["grid"]
            args.pack = args.pack or saved.get("pack")
            args.width_groups = args.width_groups or saved.get("width_groups")
            args.name = args.name or saved.get("name")
        check(bool(args.config), "no config file given", args.config,
              "Give the study config with -c configs/study_X.yaml (or --out of an existing sweep).")
        spec = read_study(args.config)
        overrides = [parse_grid_arg(g) for g in args.grid]
        if spec is None:
            check(bool(overrides), "no sweep block in the configs and no --grid given", args.config,
                  "Use a study config (configs/study_*.yaml) or add --grid KEY=v1,v2.")
            spec = StudySpec([StageSpec(MAIN, [])], source=" ".join(args.config))
        for key, values in overrides:  # the stages whose grid has the key, else the main stage
            axis = Axis((key,), tuple((v,) for v in values))
            owners = [s for s in spec.stages if key in s.keys] or spec.stages[:1]
            for stage in owners:
                zipped = [a.keys for a in stage.grid if key in a.keys and len(a.keys) > 1]
                check(not zipped, "--grid cannot replace one key of keys that vary together", zipped,
                      "Edit the sweep block instead.")
                stage.grid = [axis if key in a.keys else a for a in stage.grid] if key in stage.keys \
                    else [*stage.grid, axis]
        if args.pack:
            for stage in spec.stages:
                stage.pack = args.pack
        if args.width_groups:
            try:
                raw = None if args.width_groups.strip() == "one" else yaml.safe_load(args.width_groups)
            except yaml.YAMLError:
                raw = args.width_groups
            groups = parse_width_groups(raw, "--width-groups")
            for stage in spec.stages:
                stage.width_groups = groups
        self.fixed: dict[str, Any] = {}
        staged: dict[str, dict[str, Any]] = {}
        for item in args.fixed:
            stage, colon, rest = item.partition(":")
            if colon and "=" not in stage:  # STAGE:KEY=VALUE
                key, value = parse_set_arg(rest)
                staged.setdefault(stage, {})[key] = value
            else:
                key, value = parse_set_arg(item)
                self.fixed[key] = value
        self.spec = spec
        self.plan: Plan = make_plan(spec, args.config, args.out, args.name, self.fixed, staged)
        for name in args.fit:
            self.plan.fit(name)
        check(args.retries >= 0, "--retries must be >= 0", args.retries, "Use 0 for a single attempt.")
        self.gpus = visible_gpus()
        check(args.workers is None or args.workers >= 1, "--workers must be >= 1", args.workers,
              "Use e.g. --workers 2 (or leave it out: one per GPU, or 2 on a CPU).")
        check(args.timeout is None or args.timeout > 0, "--timeout must be > 0 seconds", args.timeout,
              "Use e.g. --timeout 3600, or leave it out for no limit.")
        workers = args.workers or spec.workers or (len(self.gpus) or min(2, os.cpu_count() or 1))
        check(workers >= 1, "the sweep block's workers must be >= 1", workers, "Use e.g. workers: 2.")
        self.workers = workers
        launch = args.launch or ("fork" if fork_available() and not self.gpus else "process")
        check(launch == "process" or fork_available(), "--launch fork needs os.fork on Linux", sys.platform,
              "Use --launch process.")
        self.launch = launch
        self.top_level = False
        """True when this process was started to run this sweep (set by :func:`main`): nothing ran
        in it before, so it can fork the fit servers itself instead of starting new processes."""
        self._servers: dict[int, _FitServer] = {}
        self._held: SweepLock | None = None
        self.slurm = dict(_slurm_option(s) for s in args.slurm)
        self._lock = threading.Condition()
        self._children: set[subprocess.Popen] = set()
        self._stopping = threading.Event()
        self._signals = 0
        self._status: dict[str, str] = {}
        self._attempts: dict[str, int] = {}

    def status(self, fit: Fit) -> str:
        """``done``, ``failed``, ``blocked`` (a fit it refers to failed) or ``pending``."""
        if fit.name in self._status:
            return self._status[fit.name]
        if RunFolder(fit.folder).done_json.is_file():
            return "done"
        if self.folder.failed(fit.name).is_file():
            return "failed"
        return "pending"

    def command(self, fit: Fit) -> list[str]:
        """The fit's command now: its plan command plus resume arguments."""
        return self.plan.command(fit) + resume_args(fit.folder, self.args.fresh)

    @staticmethod
    def _record(fit: Fit) -> dict[str, Any]:
        return {"fit": fit.name, "stage": fit.stage, "values": fit.values, "seeds": fit.seeds,
                "widths": fit.widths}

    def selected(self) -> list[Fit]:
        """The fits this call runs (``--fit``, else all)."""
        return [self.plan.fit(n) for n in self.args.fit] if self.args.fit else list(self.plan.fits)

    def stop(self, signum: int, frame: Any) -> None:  # pragma: no cover - exercised by the kill test
        """Signal handler: stop the running fits; finished ones are kept."""
        self._stopping.set()
        self._signals += 1
        with self._lock:
            for proc in list(self._children):
                proc.terminate()
            self._lock.notify_all()
        print(f"[sweep] stopping on signal {signum}; finished fits are kept, rerun to continue", flush=True)

    def lock(self) -> SweepLock | None:
        """Take the sweep folder's lock (:class:`SweepLock`), or refuse when another sweep holds it.
        A ``--fit`` run (one W&B agent's fit; several may share a folder) only checks that no whole
        sweep runs there: its fit's own run lock keeps a second process out of that fit."""
        lock = SweepLock(self.folder.lock_file)
        if self.args.fit:
            lock.check_free()
            return None
        self.folder.root.mkdir(parents=True, exist_ok=True)
        self._held = lock.acquire()
        return self._held

    def run(self) -> int:
        """Run the selected fits, then write the results; the exit code (1 when a fit failed).
        Bad input (the folder, the grid, a busy folder) is refused before anything is written."""
        self.check_folder()
        fits = self.selected()
        for fit in fits:
            if self.args.fit:
                missing = [d for d in fit.deps if self.status(self.plan.fit(d)) != "done"]
                check(not missing, f"fit {fit.name!r} refers to fits that are not done", missing,
                      "Run them first (or the whole sweep without --fit).")
        SweepLock(self.folder.lock_file).check_free()
        self.check_grid([f for f in fits if self.status(f) != "done"])
        lock = self.lock()
        try:
            return self._run(fits)
        finally:
            if lock is not None:
                lock.release()
                self._held = None

    def _run(self, fits: list[Fit]) -> int:
        self.folder.root.mkdir(parents=True, exist_ok=True)
        self.write_spec()
        todo = [f for f in fits if self.status(f) != "done"]
        for fit in fits:
            if fit not in todo:
                print(f"[sweep] skip {fit.name} (finished)", flush=True)
        where = f"{self.workers} local worker(s)" if self.args.executor == "local" else "submitit"
        members = sum(f.num_members for f in fits)
        print(f"[sweep] {self.plan.name}: {len(fits)} fit(s) of {members} member(s), {len(fits) - len(todo)} "
              f"already finished, {len(todo)} to run on {where}", flush=True)
        start = time.time()
        status = self.run_local(todo) if self.args.executor == "local" else self.run_submitit(todo)
        rows = self.collect()
        done = sum(self.status(f) == "done" for f in self.plan.fits)
        print(f"[sweep] {done}/{len(self.plan.fits)} fits done ({len(rows)} members) in "
              f"{time.time() - start:.1f} s; results: {self.folder.results}", flush=True)
        failed = [n for n, s in status.items() if s in ("failed", "blocked")]
        if failed:
            print(f"[sweep] {len(failed)} fit(s) failed or were skipped: {', '.join(failed)} "
                  f"(logs in {self.folder.root / SweepFolder.LOGS}; rerun to retry)", flush=True)
            return 1
        if self._stopping.is_set():
            return 130
        halted = [n for n, s in status.items() if s in ("stopped", "cancelled")]
        if halted:
            print(f"[sweep] {len(halted)} fit(s) stopped or cancelled from outside: {', '.join(halted)} "
                  "(each resumes from its checkpoint: rerun the sweep)", flush=True)
            return REQUEUE_EXIT_CODE
        if done == len(self.plan.fits):
            figure = (f"figure: overparam-lit plot {self.spec.figure} {self.folder.root}; "
                      if self.spec.figure else "")
            print(f"[sweep] {figure}page: overparam-lit report {self.folder.root}", flush=True)
        return 0

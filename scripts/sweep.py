"""Run a grid of ``overparam-lit fit`` runs: local workers, resumable, one results table.

Each grid point is an ordinary ``overparam-lit fit -c CONFIG... --KEY VALUE...`` with its own run
folder ``OUT/points/<name>/`` and ``--wandb.group <sweep name>`` (W&B dashboards group the
runs). Points run on ``--workers`` local processes; where there are GPUs the default is one
worker per GPU, each seeing only its GPU (``CUDA_VISIBLE_DEVICES``).

Resumable: a point whose folder holds ``done.json`` (written after a zero exit, with its final
metrics) is skipped; a point that was interrupted resumes from its ``checkpoints/last.ckpt`` (or
the newest intact checkpoint, unless ``--fresh``); a point whose earlier attempt left a run
without a checkpoint, or any run with ``--fresh``, starts over with ``--overwrite true``; a
point that fails is retried ``--retries`` times and reported. Every
call rewrites ``OUT/results.csv``: one row per point with its grid values, status and final
metrics (the last logged value of every metric key; ``val/*`` is the last validation epoch).

    python scripts/sweep.py -c configs/study_mnist1d_double_descent.yaml \\
        --grid model.init_args.width=4,8,16,32 --grid seed_everything=0,1 --out runs/dd --workers 2
    python scripts/sweep.py ... --grid-file grid.yaml          # YAML mapping KEY: [values]
    python scripts/sweep.py ... --slurm                        # write OUT/sweep.slurm (job array)
    python scripts/sweep.py ... --wandb-sweep                  # write OUT/wandb_sweep.yaml
    python scripts/sweep.py ... --collect                      # only rebuild results.csv

``--set KEY=VALUE`` adds a fixed argument to every point (for example ``--set wandb.mode=disabled``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from overparam_lit.runfolder import RunFolder  # noqa: E402
from overparam_lit.studies import (  # noqa: E402
    RESULTS_FILE,
    Point,
    check_configs,
    expand_grid,
    final_metrics,
    fit_command,
    load_grid_file,
    merge_grids,
    parse_grid_arg,
    write_results,
)
from overparam_lit.utils import ConfigError, atomic_write_json, check  # noqa: E402

_children: set[subprocess.Popen] = set()
_lock = threading.Lock()
_stopping = threading.Event()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", action="append", default=[], help="config file (repeatable, in order)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis over a fit CLI key (repeatable)")
    p.add_argument("--grid-file", type=Path, help="YAML mapping KEY: [values] (joined with --grid)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="fixed",
                   help="a fixed fit argument for every point (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="sweep folder")
    p.add_argument("--name", help="sweep name and W&B group (default: the folder's name)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel local runs (default: one per GPU, or 1 without GPUs)")
    p.add_argument("--retries", type=int, default=1, help="extra attempts for a failing point")
    p.add_argument("--timeout", type=float, default=None, help="seconds before an attempt is killed")
    p.add_argument("--fresh", action="store_true",
                   help="restart interrupted points from scratch instead of their last checkpoint")
    p.add_argument("--point", type=int, default=None, help="run only the point with this index (job arrays)")
    p.add_argument("--collect", action="store_true", help="only rebuild OUT/results.csv")
    p.add_argument("--dry-run", action="store_true", help="print each point's command and stop")
    p.add_argument("--slurm", action="store_true",
                   help="write OUT/sweep.slurm (a job array) instead of running")
    p.add_argument("--slurm-gres", default="gpu:1")
    p.add_argument("--slurm-cpus", type=int, default=4)
    p.add_argument("--slurm-time", default="24:00:00")
    p.add_argument("--slurm-max-parallel", type=int, default=None)
    p.add_argument("--slurm-option", action="append", default=[], metavar="LINE",
                   help="extra #SBATCH option, e.g. --partition=gpu (repeatable)")
    p.add_argument("--wandb-sweep", action="store_true",
                   help="write OUT/wandb_sweep.yaml (a W&B grid sweep) instead of running")
    return p


def parse_fixed(items: list[str]) -> list[str]:
    """``["KEY=VALUE", ...]`` -> ``["--KEY", "VALUE", ...]``."""
    out = []
    for item in items:
        check("=" in item and bool(item.partition("=")[0].strip()), "a --set argument is not KEY=VALUE", item,
              "Write e.g. --set trainer.max_epochs=10.")
        key, _, value = item.partition("=")
        out += [f"--{key.strip().removeprefix('--')}", value]
    return out


def visible_gpus() -> list[str]:
    """GPU ids a worker can be given (``CUDA_VISIBLE_DEVICES`` entries, else all CUDA devices)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means no GPUs
        return []


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to terminate the run if the sweep process dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the signal handler still stops children
        pass


class Sweep:
    """A grid of fit runs under one folder (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        check_configs(args.config)
        grids = [dict([parse_grid_arg(g)]) for g in args.grid]
        if args.grid_file is not None:
            grids.append(load_grid_file(args.grid_file))
        check(bool(grids), "no grid given", args.grid, "Add --grid KEY=v1,v2 or --grid-file FILE.")
        self.grid = merge_grids(*grids)
        self.points = expand_grid(self.grid)
        self.fixed = parse_fixed(args.fixed)
        self.out: Path = args.out
        self.name = args.name or self.out.resolve().name
        check(args.retries >= 0, "--retries must be >= 0", args.retries, "Use 0 for a single attempt.")
        if args.point is not None:
            check(0 <= args.point < len(self.points), "--point is outside the grid", args.point,
                  f"The grid has {len(self.points)} points: 0..{len(self.points) - 1}.")
        self.gpus = visible_gpus()
        self.workers = args.workers or max(1, len(self.gpus))
        check(self.workers >= 1, "--workers must be >= 1", args.workers, "Use e.g. --workers 2.")

    # ---- files ---------------------------------------------------------------------------
    def point_dir(self, point: Point) -> Path:
        return self.out / "points" / point.name

    def command(self, point: Point) -> list[str]:
        """The point's fit command: a resume from its newest intact checkpoint, a start over
        (``--overwrite true``) when its folder holds a run without one (or with ``--fresh``),
        else a plain fit."""
        cmd = fit_command(self.args.config, point, self.point_dir(point), self.name, self.fixed)
        folder = RunFolder(self.point_dir(point))
        ckpt = None if self.args.fresh else folder.resume_checkpoint()
        if ckpt is not None:
            cmd += ["--ckpt_path", str(ckpt)]
        elif folder.holds_run():
            cmd += ["--overwrite", "true"]
        return cmd

    def write_spec(self) -> None:
        atomic_write_json({"name": self.name, "configs": self.args.config, "grid": self.grid,
                           "fixed": self.args.fixed,
                           "points": [{"index": i, "name": p.name, "values": p.values}
                                      for i, p in enumerate(self.points)]}, self.out / "sweep.json")

    def collect(self) -> list[dict[str, Any]]:
        """Write ``results.csv``: one row per point, grid values, status, final metrics."""
        rows = []
        for p in self.points:
            d = self.point_dir(p)
            row: dict[str, Any] = {"point": p.name, **p.parsed()}
            done = RunFolder(d).read_done()
            if done is not None:
                row.update(status="done", attempts=done.get("attempts"), seconds=done.get("seconds"))
                row.update(done.get("metrics", {}))
            elif (d / "failed.json").is_file():
                fail = json.loads((d / "failed.json").read_text())
                row.update(status="failed", attempts=fail.get("attempts"))
            else:
                row["status"] = "pending"
            rows.append(row)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f"{RESULTS_FILE}.{os.getpid()}"
        write_results(tmp, rows, ["point", *self.grid, "status", "attempts", "seconds"])
        tmp.replace(self.out / RESULTS_FILE)
        return rows

    # ---- running -------------------------------------------------------------------------
    def run_point(self, index: int, slot: int) -> str:
        point = self.points[index]
        d = self.point_dir(point)
        folder = RunFolder(d)
        if folder.done_json.is_file():
            print(f"[sweep] skip {point.name} (finished)", flush=True)
            return "skipped"
        d.mkdir(parents=True, exist_ok=True)
        (d / "failed.json").unlink(missing_ok=True)
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        elif "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        previous = len(list(d.glob("sweep_attempt*.log")))
        for attempt in range(1, self.args.retries + 2):
            if _stopping.is_set():
                return "stopped"
            cmd = self.command(point)
            log = d / f"sweep_attempt{previous + attempt}.log"
            start = time.time()
            where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if self.gpus else ""
            print(f"[sweep] run  {point.name} (attempt {attempt}){where}", flush=True)
            with open(log, "w") as fh:
                fh.write("$ " + shlex.join(cmd) + "\n")
                fh.flush()
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=_die_with_parent if os.name == "posix" else None)
                with _lock:
                    _children.add(proc)
                try:
                    rc = proc.wait(timeout=self.args.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
                    fh.write(f"\n[sweep] killed after --timeout {self.args.timeout} s\n")
                finally:
                    with _lock:
                        _children.discard(proc)
            seconds = round(time.time() - start, 2)
            if rc == 0:
                folder.write_done({"point": point.name, "index": index, "values": point.parsed(),
                                   "attempts": attempt, "seconds": seconds, "command": cmd,
                                   "metrics": final_metrics(d)})
                print(f"[sweep] done {point.name} in {seconds:.1f} s", flush=True)
                return "done"
            if _stopping.is_set():
                return "stopped"
            tail = log.read_text().strip().splitlines()[-3:]
            print(f"[sweep] FAIL {point.name} (attempt {attempt}, exit {rc}); log {log}:\n    "
                  + "\n    ".join(tail), flush=True)
        atomic_write_json({"point": point.name, "attempts": self.args.retries + 1, "exit_code": rc,
                           "log": str(log)}, d / "failed.json")
        return "failed"

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.write_spec()
        indices = [self.args.point] if self.args.point is not None else list(range(len(self.points)))
        todo = [i for i in indices if not RunFolder(self.point_dir(self.points[i])).done_json.is_file()]
        print(f"[sweep] {self.name}: {len(indices)} point(s), {len(indices) - len(todo)} already finished, "
              f"{len(todo)} to run on {self.workers} worker(s)", flush=True)
        slots = list(range(self.workers))
        slot_lock = threading.Lock()

        def job(i: int) -> str:
            with slot_lock:
                slot = slots.pop(0)
            try:
                return self.run_point(i, slot)
            finally:
                with slot_lock:
                    slots.append(slot)

        with ThreadPoolExecutor(self.workers) as pool:
            status = list(pool.map(job, indices))
        rows = self.collect()
        failed = [self.points[i].name for i, s in zip(indices, status, strict=True) if s == "failed"]
        done = sum(r["status"] == "done" for r in rows)
        print(f"[sweep] {done}/{len(rows)} points finished; results: {self.out / RESULTS_FILE}", flush=True)
        if failed:
            print(f"[sweep] {len(failed)} point(s) failed after {self.args.retries + 1} attempt(s): "
                  + ", ".join(failed) + " (see sweep_attempt*.log in their folders; rerun to retry)",
                  flush=True)
            return 1
        return 130 if _stopping.is_set() else 0

    # ---- cluster files -------------------------------------------------------------------
    def base_args(self) -> list[str]:
        """Arguments that reproduce this sweep (for the job-array script)."""
        args: list[str] = []
        for cfg in self.args.config:
            args += ["-c", str(Path(cfg).resolve())]
        for key, values in self.grid.items():
            args += ["--grid", f"{key}={','.join(values)}"]
        for item in self.args.fixed:
            args += ["--set", item]
        args += ["--out", str(self.out.resolve()), "--name", self.name, "--retries", str(self.args.retries)]
        return args

    def write_slurm(self) -> Path:
        a = self.args
        n = len(self.points)
        array = f"0-{n - 1}" + (f"%{a.slurm_max_parallel}" if a.slurm_max_parallel else "")
        logs = self.out.resolve() / "slurm"
        lines = ["#!/bin/bash", f"#SBATCH --job-name={self.name}", f"#SBATCH --array={array}",
                 f"#SBATCH --cpus-per-task={a.slurm_cpus}", f"#SBATCH --time={a.slurm_time}",
                 f"#SBATCH --output={logs}/%A_%a.out"]
        if a.slurm_gres:
            lines.append(f"#SBATCH --gres={a.slurm_gres}")
        lines += [f"#SBATCH {opt}" for opt in a.slurm_option]
        cmd = shlex.join([sys.executable, str(Path(__file__).resolve()), *self.base_args()])
        lines += [
            f"# {n} points of sweep {self.name}, one array task each, every task an ordinary",
            "# `overparam-lit fit`. Finished points are skipped, so resubmitting reruns only the",
            "# unfinished ones; each task also rewrites results.csv when it ends.",
            f"# Submit: sbatch {self.out.resolve() / 'sweep.slurm'}",
            "set -euo pipefail",
            f"mkdir -p {shlex.quote(str(logs))}",
            f"cd {shlex.quote(os.getcwd())}",
            f'{cmd} --workers 1 --point "$SLURM_ARRAY_TASK_ID"',
        ]
        path = self.out / "sweep.slurm"
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
        return path

    def write_wandb_sweep(self) -> Path:
        command = ["${env}", "${interpreter}", "-m", "overparam_lit", "fit"]
        for cfg in self.args.config:
            command += ["-c", str(cfg)]
        command += [f"{k}={v}" for k, v in zip(self.fixed[::2], self.fixed[1::2], strict=True)]
        command += [f"--wandb.group={self.name}", "${args}"]
        spec = {
            "name": self.name,
            "program": "overparam_lit/cli.py",
            "method": "grid",
            "parameters": {k: {"values": [p for p in (Point("", {k: v}).parsed()[k] for v in vals)]}
                           for k, vals in self.grid.items()},
            "command": command,
        }
        path = self.out / "wandb_sweep.yaml"
        self.out.mkdir(parents=True, exist_ok=True)
        header = (f"# W&B grid sweep of {len(self.points)} runs ({self.name}). From the repository root:\n"
                  f"#   wandb sweep {path}   then on each machine:   wandb agent <entity/project/sweep id>\n"
                  "# Each agent run is `overparam-lit fit` with --KEY=VALUE for its grid point; its run\n"
                  "# folder is the CLI default runs/<time>.\n")
        path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
        return path


def _stop(signum: int, frame: Any) -> None:  # pragma: no cover - exercised by the kill test
    _stopping.set()
    with _lock:
        for proc in list(_children):
            proc.terminate()
    print(f"[sweep] stopping on signal {signum}; finished points are kept, rerun to continue", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep = Sweep(args)
    except ConfigError as err:
        print(f"sweep.py: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for i, p in enumerate(sweep.points):
            print(f"{i:4d} {p.name}: {shlex.join(sweep.command(p))}")
        return 0
    if args.slurm or args.wandb_sweep:
        if args.slurm:
            print(f"[sweep] wrote {sweep.write_slurm()}")
        if args.wandb_sweep:
            print(f"[sweep] wrote {sweep.write_wandb_sweep()}")
        sweep.write_spec()
        return 0
    if args.collect:
        rows = sweep.collect()
        print(f"[sweep] {sum(r['status'] == 'done' for r in rows)}/{len(rows)} points finished; "
              f"wrote {sweep.out / RESULTS_FILE}")
        return 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    return sweep.run()


if __name__ == "__main__":
    sys.exit(main())

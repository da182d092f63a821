"""Local execution: ``--workers`` threads, each running one fit at a time (with retries) on its GPU
or its share of the cores, forked by its fit server or started as a new process; a fit starts once
the fits it refers to are done."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from overparam_lit.runfolder import RunFolder
from overparam_lit.stopping import DIVERGED_EXIT_CODE, REQUEUE_EXIT_CODE
from overparam_lit.studies.results import final_metrics
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.spec import Fit, Plan, StudySpec
from overparam_lit.studies.sweep.fit_process import _die_with_parent
from overparam_lit.studies.sweep.folder import SweepLock
from overparam_lit.studies.sweep.fork_server import _FitServer, _ForkedFit
from overparam_lit.threads import available_cores, thread_env
from overparam_lit.utils import atomic_write_json

BAD_INPUT = 2
"""Exit code of ``overparam-lit fit`` on bad input: retrying cannot help."""


def visible_gpus() -> list[str]:
    """GPU ids a worker can be given (``CUDA_VISIBLE_DEVICES`` entries, else all CUDA devices)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means no GPUs
        return []


class LocalPool:
    """The local workers of a sweep and their fit servers. Part of
    :class:`~overparam_lit.studies.sweep.planned.Sweep`."""

    args: argparse.Namespace
    folder: SweepFolder
    plan: Plan
    spec: StudySpec
    gpus: list[str]
    workers: int
    launch: str
    top_level: bool
    _servers: dict[int, _FitServer]
    _held: SweepLock | None
    _lock: threading.Condition
    _children: set[subprocess.Popen]
    _stopping: threading.Event
    _status: dict[str, str]
    _attempts: dict[str, int]

    def run_fit(self, fit: Fit, slot: int) -> str:
        """Run one fit in a subprocess (with retries); returns its status."""
        folder = RunFolder(fit.folder)
        if folder.done_json.is_file():
            return "done"
        fit.folder.mkdir(parents=True, exist_ok=True)
        self.folder.failed(fit.name).unlink(missing_ok=True)
        env = self._slot_env(slot)
        previous = len(self.folder.logs_of(fit.name))
        rc, log = 0, self.folder.log(fit.name, previous + 1)
        for attempt in range(1, self.args.retries + 2):
            if self._stopping.is_set():
                return "stopped"
            cmd = self.command(fit)
            log = self.folder.log(fit.name, previous + attempt)
            log.parent.mkdir(parents=True, exist_ok=True)
            where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if self.gpus else ""
            resumed = " (resuming)" if "--ckpt_path" in cmd else ""
            print(f"[sweep] run  {fit.name}{resumed}, {fit.num_members} member(s), attempt {attempt}{where}",
                  flush=True)
            start = time.time()
            with open(log, "w") as fh:
                fh.write("$ " + shlex.join(cmd) + "\n")
                fh.flush()
                proc = self._start(cmd, fh, env, slot)
                with self._lock:
                    self._children.add(proc)
                    if self._stopping.is_set():  # the stop came while it started: it missed the signal
                        proc.terminate()
                try:
                    rc = proc.wait(timeout=self.args.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
                    with open(log, "a") as tail_fh:
                        tail_fh.write(f"\n[sweep] killed after --timeout {self.args.timeout} s\n")
                finally:
                    with self._lock:
                        self._children.discard(proc)
            seconds = round(time.time() - start, 2)
            self._attempts[fit.name] = attempt
            if self._stopping.is_set():
                # a fit stopped by the sweep's signal ends early, often with exit 0 (Lightning stops
                # gracefully on SIGTERM): it is not done, and a rerun resumes it from its checkpoint
                with open(log, "a") as tail_fh:
                    tail_fh.write(f"\n[sweep] stopped with the sweep (exit {rc}); not finished, a rerun "
                                  "resumes it\n")
                print(f"[sweep] stopped {fit.name} (exit {rc}); a rerun resumes it", flush=True)
                return "stopped"
            if rc == REQUEUE_EXIT_CODE:  # signalled from outside: it left a resumable folder
                with open(log, "a") as tail_fh:
                    tail_fh.write(f"\n[sweep] the fit was stopped by a signal (exit {rc}); not finished, "
                                  "a rerun resumes it\n")
                print(f"[sweep] stopped {fit.name} (exit {rc}: stopped by a signal); a rerun resumes it",
                      flush=True)
                return "stopped"
            if rc == 0:
                folder.write_done({**self._record(fit), "attempts": attempt, "seconds": seconds,
                                   "command": cmd, "metrics": final_metrics(fit.folder)})
                print(f"[sweep] done {fit.name} in {seconds:.1f} s", flush=True)
                return "done"
            if folder.done_json.is_file():  # another process (a `--fit` run) finished it meanwhile
                print(f"[sweep] done {fit.name} (finished by another process)", flush=True)
                return "done"
            tail = log.read_text().strip().splitlines()[-3:]
            print(f"[sweep] FAIL {fit.name} (attempt {attempt}, exit {rc}); log {log}:\n    "
                  + "\n    ".join(tail), flush=True)
            if rc in (BAD_INPUT, DIVERGED_EXIT_CODE):  # the same settings would fail the same way
                break
        atomic_write_json({"fit": fit.name, "attempts": self._attempts.get(fit.name), "exit_code": rc,
                           "log": str(log)}, self.folder.failed(fit.name))
        return "failed"

    def _slot_env(self, slot: int) -> dict[str, str]:
        """The environment of the fits of worker ``slot``: its GPU, or its share of the cores."""
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        elif "OMP_NUM_THREADS" not in os.environ:  # the fit's own rule would not know of the others
            env.update(thread_env(max(1, available_cores() // self.workers)))
        return env

    def _start(self, cmd: list[str], fh: Any, env: dict[str, str], slot: int) -> Any:
        """Start one attempt of a fit, its output to the open log ``fh``: forked by the slot's fit
        server (``--launch fork``) or a new process; returns a ``Popen``-like handle."""
        if self.launch == "fork":
            server = self._servers.get(slot)
            if server is None or not server.alive:  # none yet (or it died): a new process, not a fork
                if server is not None:  # of this process, which runs threads now
                    server.close()
                server = self._servers[slot] = _FitServer(env, here=False, close=[])
            return _ForkedFit(server, cmd, Path(fh.name), env)
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if os.name == "posix" else None)

    def _start_servers(self, count: int) -> None:
        """One fit server per worker, before the worker threads start: forked from this process
        when it is the sweep's own process and runs no other thread (torch's thread pool has not
        started and no lock is held), else new processes that import once."""
        if self.launch != "fork":
            return
        here = self.top_level and threading.active_count() == 1
        # wandb, and what its init imports on every run (about a second on 2 busy cores)
        preload = ("wandb", "wandb.sdk.launch.inputs.internal") if self._uses_wandb() else ()
        fds: list[int] = [self._held._fd] if self._held is not None and self._held._fd is not None else []
        for slot in range(count):
            server = _FitServer(self._slot_env(slot), here, close=list(fds), preload=preload)
            fds += server.fds()
            self._servers[slot] = server

    def _uses_wandb(self) -> bool:
        """True when some fit logs to W&B (``--wandb.mode`` of its configs and arguments, not
        ``disabled``): the fit servers import wandb once then."""
        from overparam_lit.wandb_mode import resolve_wandb_mode, wandb_mode_in

        base = wandb_mode_in([arg for cfg in self.plan.configs for arg in ("-c", str(cfg))])
        modes = {resolve_wandb_mode(wandb_mode_in(fit.args, default=base)) for fit in self.plan.fits}
        return modes != {"disabled"}

    def _stop_servers(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    def run_local(self, fits: list[Fit]) -> dict[str, str]:
        """Run ``fits`` on the local workers, each once the fits it refers to are done."""
        order = {s.name: i for i, s in enumerate(self.spec.stages)}
        queue = sorted(fits, key=lambda f: (order[f.stage], -f.cost()))
        result: dict[str, str] = {}
        slots = list(range(self.workers))
        waiting = {f.name for f in fits}

        def dep_state(name: str) -> str:
            if name in self._status:
                return self._status[name]
            if RunFolder(self.plan.fit(name).folder).done_json.is_file():
                return "done"
            return "pending" if name in waiting else "failed"

        def ready(fit: Fit) -> str | None:
            states = [dep_state(d) for d in fit.deps]
            if any(s in ("failed", "blocked", "stopped") for s in states):
                return "blocked"
            return "ready" if all(s == "done" for s in states) else None

        def worker() -> None:
            while True:
                with self._lock:
                    while True:
                        if self._stopping.is_set() or not queue:
                            return
                        pick = None
                        for fit in list(queue):
                            state = ready(fit)
                            if state == "blocked":
                                queue.remove(fit)
                                waiting.discard(fit.name)
                                result[fit.name] = self._status[fit.name] = "blocked"
                                print(f"[sweep] skip {fit.name}: a fit it refers to failed", flush=True)
                                self._lock.notify_all()
                            elif state == "ready" and pick is None:
                                pick = fit
                        if pick is not None:
                            queue.remove(pick)
                            slot = slots.pop(0)
                            break
                        if not queue:
                            return
                        self._lock.wait(timeout=1.0)
                status = "failed"
                try:
                    status = self.run_fit(pick, slot)
                finally:
                    with self._lock:
                        result[pick.name] = status
                        waiting.discard(pick.name)
                        self._status[pick.name] = status
                        slots.append(slot)
                        self._lock.notify_all()

        count = min(self.workers, len(queue)) or 1
        if queue:
            self._start_servers(count)
        try:
            threads = [threading.Thread(target=worker, daemon=True) for _ in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            self._stop_servers()
        return result

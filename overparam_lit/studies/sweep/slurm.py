"""SLURM through submitit (``--executor slurm``): each fit is a :class:`FitJob`, submitted stage by
stage; the sweep waits for each stage's jobs by their ``squeue`` state, and a stopped sweep cancels
its queued and running jobs."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overparam_lit.runfolder import RunFolder
from overparam_lit.stopping import REQUEUE_EXIT_CODE
from overparam_lit.studies.grid import parse_set_arg
from overparam_lit.studies.results import final_metrics
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.spec import Fit, Plan, StudySpec
from overparam_lit.studies.sweep.folder import resume_args
from overparam_lit.utils import ConfigError, atomic_write_json

SLURM_ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                          "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"})
"""SLURM job states of a job that is queued, running or coming back (a requeue)."""

SLURM_FINAL = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL",
                         "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})
"""SLURM job states of a job that has ended and will not run again by itself."""

CANCEL_WAIT_S = 60.0
"""How long a stopped sweep waits for the SLURM jobs it cancelled to leave the nodes (their fits
save a checkpoint first), so that a rerun does not find their run folders still locked."""

MAX_TIMEOUTS = 50
"""Requeues of one job after a time limit (submitit's ``max_num_timeout``; its default is 3). Each
requeue resumes from a checkpoint, so a fit longer than the time limit goes on until it is done.
``--slurm max_num_timeout=N`` changes it."""


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job in ``job_ids`` (``squeue -r --states=all``: the jobs the controller
    still knows, which include those that ended less than ``MinJobAge`` ago); ``{}`` when
    ``squeue`` fails or knows none of them."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        job_id, _, state = line.strip().partition("|")
        if job_id in job_ids:
            states[job_id] = state.split(" ")[0].upper()
    return states


@dataclass
class FitJob:
    """One fit as a submitit job: resumes from the run folder's newest checkpoint, runs the fit in a
    child process and writes ``done.json``; returns its record, with ``status`` ``done`` or
    ``stopped``.

    Requeue follows submitit's checkpoint protocol. SLURM sends submitit's pre-timeout signal
    (``--signal=USR2@<slurm_signal_delay_s>``) to every process of the job, the fit among them: the
    fit stops at its next optimizer step, leaves a resumable folder and exits with
    :data:`~overparam_lit.stopping.REQUEUE_EXIT_CODE`. Only then does this job hand the signal to
    submitit's handler, which calls :meth:`checkpoint` and requeues the job (``scontrol
    requeue``); the requeued job resumes the fit from its checkpoint. A fit that exits with that
    code without the pre-timeout signal (SIGTERM of ``scancel``, or of a process ``kill``) is
    ``stopped``: not done, not failed, and a rerun of the sweep resumes it.

    Args:
        command: the fit command without resume arguments.
        folder: the fit's run folder.
        record: what ``done.json`` records besides attempts, seconds and metrics.
        fresh: start over instead of resuming.
    """

    command: list[str]
    folder: str
    record: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False

    def __call__(self) -> dict[str, Any]:
        start = time.time()
        requeues = int(os.environ.get("SLURM_RESTART_COUNT") or 0)  # this job's earlier runs
        cmd = self.command + resume_args(self.folder, self.fresh and not requeues)
        self.fresh = False  # a requeued job resumes (also one SLURM requeued from the first pickle)
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        print(f"[sweep] $ {shlex.join(cmd)}", flush=True)
        preempt = _preempt_signal()
        seen: list[int] = []
        proc: subprocess.Popen | None = None

        def note(signum: int, frame: Any) -> None:  # the fit got it too; a second copy changes nothing
            seen.append(signum)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signum)

        main = threading.current_thread() is threading.main_thread()
        submitit_handler = signal.signal(preempt, note) if main else None
        try:
            proc = subprocess.Popen(cmd)
            rc = proc.wait()
        finally:
            if main:
                signal.signal(preempt, submitit_handler)  # type: ignore[arg-type]
        seconds = round(time.time() - start, 2)
        if seen and rc in (REQUEUE_EXIT_CODE, -preempt) and callable(submitit_handler):
            # time limit or preemption (a fit still starting dies of the signal): requeue and exit
            print(f"[sweep] fit stopped on the pre-timeout signal after {seconds:.1f} s (exit {rc}); "
                  "requeueing the job", flush=True)
            submitit_handler(preempt, None)
        if rc == REQUEUE_EXIT_CODE:
            print(f"[sweep] fit stopped by a signal (exit {rc}) after {seconds:.1f} s; a rerun of the "
                  "sweep resumes it", flush=True)
            return {**self.record, "status": "stopped", "exit_code": rc, "seconds": seconds, "command": cmd}
        if rc != 0:
            raise subprocess.CalledProcessError(rc, cmd)
        record = {**self.record, "attempts": 1 + requeues, "seconds": seconds, "command": cmd,
                  "metrics": final_metrics(self.folder)}
        RunFolder(self.folder).write_done(record)
        return {**record, "status": "done"}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on preemption and timeout: requeue this job (it resumes)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _preempt_signal() -> signal.Signals:
    """submitit's pre-timeout signal (``SUBMITIT_PREEMPT_SIGNAL``, default ``USR2``)."""
    from submitit.core.job_environment import JobEnvironment

    return signal.Signals["SIG" + JobEnvironment.USR_SIG]


def _slurm_option(text: str) -> tuple[str, Any]:
    key, value = parse_set_arg(text)
    generic = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node",
               "stderr_to_stdout", "name")
    if key.startswith("slurm_") or key in generic:
        return key, value
    return f"slurm_{key}", value


class SlurmJobs:
    """Submitting a sweep's fits as submitit jobs and waiting for them. Part of
    :class:`~overparam_lit.studies.sweep.planned.Sweep`."""

    args: argparse.Namespace
    folder: SweepFolder
    plan: Plan
    spec: StudySpec
    slurm: dict[str, Any]
    _stopping: threading.Event
    _signals: int
    _status: dict[str, str]

    def run_submitit(self, fits: list[Fit]) -> dict[str, str]:
        """Submit ``fits`` through submitit, stage by stage, and wait for them."""
        try:
            import submitit
        except ImportError:
            raise ConfigError("--executor slurm needs the submitit package (got it missing). "
                              "Install it with `pip install submitit`.") from None
        params = {"name": self.plan.name, **self.slurm}
        timeouts = params.pop("slurm_max_num_timeout", MAX_TIMEOUTS)
        executor = submitit.AutoExecutor(folder=str(self.folder.slurm / "%j"), cluster=self.args.cluster,
                                         slurm_max_num_timeout=timeouts)
        try:
            executor.update_parameters(**params)
        except Exception as err:  # noqa: BLE001 - submitit raises plain errors for unknown options
            raise ConfigError(f"submitit refused the --slurm options: {err} (got {params!r}). Use its "
                              "AutoExecutor names (timeout_min, gpus_per_node, cpus_per_task, mem_gb) or "
                              "slurm_<sbatch option> names, e.g. partition=gpu.") from None
        result: dict[str, str] = {}
        for stage in self.spec.stages:
            todo = [f for f in fits if f.stage == stage.name and self.status(f) != "done"]
            blocked = [f for f in todo if any(self.status(self.plan.fit(d)) != "done" for d in f.deps)]
            for fit in blocked:
                result[fit.name] = self._status[fit.name] = "blocked"
            todo = [f for f in todo if f not in blocked]
            if not todo or self._stopping.is_set():
                continue
            jobs = []
            with executor.batch():
                for fit in todo:
                    job = FitJob(self.plan.command(fit), str(fit.folder), self._record(fit), self.args.fresh)
                    jobs.append((fit, executor.submit(job)))
            print(f"[sweep] stage {stage.name}: submitted {len(jobs)} job(s) "
                  f"({', '.join(str(j.job_id) for _, j in jobs)}); waiting", flush=True)
            if executor.cluster == "slurm":
                self._wait_slurm(jobs, result)
            else:  # submitit's debug and local executors: their jobs run here or in a child
                for fit, job in jobs:
                    self._finish_job(fit, job, "", result)
        return result

    def _wait_slurm(self, jobs: list[tuple[Fit, Any]], result: dict[str, str]) -> None:
        """Wait for SLURM ``jobs`` by their queue state (``squeue``, which needs no accounting
        database): a requeued job is waited for, a cancelled one is ``cancelled``, an ended one is
        read from its result. On the sweep's SIGTERM or SIGINT the jobs still queued or running are
        cancelled (their fits stop at the next step and keep a checkpoint), so a rerun resumes them."""
        pending = {str(job.job_id): (fit, job) for fit, job in jobs}
        unseen: dict[str, int] = {}
        start = time.time()
        while pending:
            if self._stopping.is_set():
                self._cancel_jobs(pending, result)
                return
            states = slurm_states(list(pending))
            for job_id, (fit, job) in list(pending.items()):
                state = states.get(job_id) or str(job.state).split(" ")[0].upper()
                if state in SLURM_ACTIVE:
                    unseen.pop(job_id, None)
                    continue
                if state not in SLURM_FINAL and not job.paths.result_pickle.exists():
                    unseen[job_id] = unseen.get(job_id, 0) + 1  # not listed (yet, or any more)
                    if unseen[job_id] < 5:
                        continue
                del pending[job_id]
                self._finish_job(fit, job, state, result)
            self._stopping.wait(min(15.0, 1.0 + (time.time() - start) / 30))

    def _finish_job(self, fit: Fit, job: Any, state: str, result: dict[str, str]) -> None:
        """Record the end of ``job`` (SLURM ``state``, empty when unknown) as the fit's status."""
        if state == "CANCELLED":
            status = "cancelled"
            print(f"[sweep] cancelled {fit.name} (job {job.job_id} was cancelled); a rerun resumes it",
                  flush=True)
        else:
            try:
                record = job.result()
                stopped = isinstance(record, dict) and record.get("status") == "stopped"
                status = "stopped" if stopped else "done"
                if status == "done":
                    print(f"[sweep] done {fit.name} (job {job.job_id})", flush=True)
                else:
                    print(f"[sweep] stopped {fit.name} (job {job.job_id}: the fit was stopped by a signal); "
                          "a rerun resumes it", flush=True)
            except Exception as err:  # noqa: BLE001 - submitit wraps the fit's failure
                status = "failed"
                how = f" ended {state}" if state else ""
                self.folder.failed(fit.name).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json({"fit": fit.name, "job": str(job.job_id), "state": state,
                                   "error": str(err)[-2000:]}, self.folder.failed(fit.name))
                print(f"[sweep] FAIL {fit.name} (job {job.job_id}{how}): {str(err).strip()[-300:]}",
                      flush=True)
        result[fit.name] = self._status[fit.name] = status

    def _cancel_jobs(self, pending: dict[str, tuple[Fit, Any]], result: dict[str, str]) -> None:
        """``scancel`` the sweep's queued and running jobs, wait (up to :data:`CANCEL_WAIT_S`, or
        until a second signal) until they have left the node, and record their fits as stopped."""
        ids = list(pending)
        subprocess.run(["scancel", *ids], check=False)
        print(f"[sweep] cancelled {len(ids)} SLURM job(s) ({', '.join(ids)}): their fits stop at the next "
              "step and keep a checkpoint; rerun the sweep to resume them", flush=True)
        deadline = time.time() + CANCEL_WAIT_S
        while self._signals < 2 and time.time() < deadline:
            if not any(s in SLURM_ACTIVE for s in slurm_states(ids).values()):
                break
            time.sleep(0.5)
        for fit, _ in pending.values():
            result[fit.name] = self._status[fit.name] = "stopped"

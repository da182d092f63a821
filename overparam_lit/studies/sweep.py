"""``overparam-lit sweep``: run a study's grid of ``overparam-lit fit`` runs, packed into member fits.

    overparam-lit sweep -c configs/study_mnist1d_double_descent.yaml --out runs/dd
    overparam-lit plot double-descent runs/dd

The grid, the packing of seeds and widths into member fits, and later stages that start from an
earlier stage's run folders live in the study config's ``sweep:`` block
(:mod:`overparam_lit.studies.spec`). Every fit is an ordinary ``overparam-lit fit -c CONFIG ...``
with its own run folder ``OUT/points/<fit>/`` and ``--wandb.group <sweep name>``.

- **Local** (default): ``--workers`` processes (default: one per GPU, each seeing only its GPU;
  without GPUs two, or one on a single core), largest fits first; a fit of a later stage starts
  once the fits it refers to are done. On Linux without GPUs (``--launch fork``) each worker has
  imported torch, Lightning and the CLI once and forks a child per fit, which starts like a new
  process (random state, threads, signals, its log), so start-up is paid once per worker, not per
  fit; ``--launch process`` starts each fit as a new ``python -m overparam_lit fit``.
- **SLURM** (``--executor slurm``): each fit is a submitit job (``submitit.AutoExecutor`` running a
  :class:`FitJob`); ``--slurm KEY=VALUE`` passes options through (``partition=gpu``,
  ``gpus_per_node=1``, ``timeout_min=600``, ``signal_delay_s=120``, ...). The sweep waits for each
  stage's jobs (their ``squeue`` state) before it submits the next stage. A job that reaches its
  time limit or is preempted gets submitit's pre-timeout signal, its fit stops with exit code 75
  and the job is requeued (submitit's checkpoint protocol); the requeued job resumes the fit from
  its last checkpoint. A cancelled job (``scancel``) is reported as ``cancelled``. SIGTERM or
  Ctrl-C to the sweep cancels its queued and running jobs (their fits keep their checkpoints) and
  ends it; a rerun resumes them.
- **Resumable**: a fit whose folder holds ``done.json`` is skipped; an interrupted fit resumes from
  its newest intact checkpoint (``--ckpt_path``, chosen by ``RunFolder.resume_checkpoint``); one
  that left a run without a checkpoint starts over (``--overwrite true``). A failing fit is retried
  ``--retries`` times, except on bad input (exit code 2) or a diverged loss (exit code 3). A fit
  that ends while the sweep stops (SIGTERM, Ctrl-C) is not recorded as done, even when Lightning
  ended it with exit code 0: a rerun resumes it. A fit that exits 75 (stopped by a signal from
  outside, its folder resumable) is ``stopped``, not retried: a rerun resumes it. The sweep's exit
  code: 0 when every fit is done, 1 when one failed, 75 when fits were stopped or cancelled from
  outside, 130 when the sweep itself was stopped.
- **One sweep per folder**: a sweep holds ``OUT/sweep.lock`` while it runs, and a second sweep on the
  folder is refused (naming the process that holds it); a ``--fit`` run only checks that no whole
  sweep runs there. A folder that holds another study's sweep (another plan in ``sweep.json``) or one
  fit's run is refused too: a new ``--out`` starts a new study.
- **Bad input ends before the first fit**: every fit that is to run is built through the fit's own
  parser and constructors (no training, nothing written), and a grid point that ``overparam-lit fit``
  would refuse (``width 0``, ``lr -1``, a misspelt key) ends the sweep with one message and exit 2.
- ``OUT/results.csv``: one row per member of every fit (its grid values, with ``seed`` and
  ``width`` from ``members.csv``, the fit's status and the member's final metrics);
  ``OUT/fits.csv``: one row per fit. ``--collect`` only rewrites both.
- ``--dry-run`` prints every fit's command; ``--wandb-sweep`` writes a W&B sweep file per stage
  (each W&B run is ``overparam-lit sweep ... --fit NAME``).
- ``--set KEY=VALUE`` adds a fixed argument to every fit (``--set trainer.max_epochs=2`` for a
  reduced run), ``--set STAGE:KEY=VALUE`` to the fits of one stage; ``--grid KEY=v1,v2`` replaces
  or adds a grid axis (of the stages that have the key, else of the main one); ``--pack`` and
  ``--width-groups`` override packing (``--width-groups one``: every width in one fit, for GPUs).
  A config without a ``sweep:`` block needs ``--grid``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from overparam_lit.runfolder import RunFolder, RunLock
from overparam_lit.stopping import DIVERGED_EXIT_CODE, REQUEUE_EXIT_CODE
from overparam_lit.studies.grid import DONE_FILE, cli_text, parse_grid_arg, parse_set_arg
from overparam_lit.studies.results import final_metrics, member_finals, write_results
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.spec import (
    MAIN,
    PACK_MODES,
    SEED_KEY,
    WIDTH_KEYS,
    Axis,
    Fit,
    Plan,
    StageSpec,
    StudySpec,
    make_plan,
    parse_width_groups,
    read_study,
)
from overparam_lit.threads import available_cores, thread_env
from overparam_lit.utils import ConfigError, OneLineParser, atomic_write_json, check

__all__ = ["DONE_FILE", "FitJob", "Sweep", "build_parser", "main", "resume_args", "visible_gpus"]

BAD_INPUT = 2
"""Exit code of ``overparam-lit fit`` on bad input: retrying cannot help."""


EXAMPLE = "overparam-lit sweep -c configs/study_mnist1d_double_descent.yaml --out runs/dd"

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


def build_parser() -> argparse.ArgumentParser:
    """The ``overparam-lit sweep`` argument parser."""
    doc = __doc__ or ""
    p = OneLineParser(example=EXAMPLE, prog="overparam-lit sweep", description=doc.split("\n\n")[0],
                                epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", action="append", default=[],
                   help="config file (repeatable, in order); one of them holds the sweep block")
    p.add_argument("--out", type=Path, help="sweep folder (required)")
    p.add_argument("--name", help="sweep name and W&B group (default: the block's name or the folder's)")
    p.add_argument("--set", action="append", default=[], metavar="[STAGE:]KEY=VALUE", dest="fixed",
                   help="a fixed fit argument for every fit (of every stage, or of STAGE only); repeatable")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="replace or add an axis of the main grid (repeatable)")
    p.add_argument("--pack", choices=PACK_MODES, help="override the block's packing (every stage)")
    p.add_argument("--width-groups", metavar="GROUPS",
                   help="override width_groups: a YAML list such as '[[4, 8], [16, 32]]', or 'one' for "
                        "every width in one fit (on a GPU small members are nearly free)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel local fits (default: the block's workers, one per GPU, or 2 on a CPU)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit option, e.g. partition=gpu, gpus_per_node=1, timeout_min=600, "
                        "signal_delay_s=120 (the pre-timeout signal), max_num_timeout=50 (requeues "
                        "after a time limit) (repeatable)")
    p.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # submitit cluster (tests: debug/local)
    p.add_argument("--launch", choices=("fork", "process"), default=None,
                   help="how a local fit starts: 'fork' (default on Linux without GPUs) forks each fit "
                        "from a worker that imported torch, Lightning and the CLI once; 'process' starts "
                        "each fit as a new `python -m overparam_lit fit` process (start-up and imports "
                        "every time)")
    p.add_argument("--retries", type=int, default=1, help="extra attempts of a failing fit")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a local attempt is killed")
    p.add_argument("--fresh", action="store_true", help="start interrupted fits over instead of resuming")
    p.add_argument("--fit", action="append", default=[], metavar="NAME",
                   help="run only this fit (repeatable; the fits it refers to must be done)")
    p.add_argument("--dry-run", action="store_true", help="print every fit's command and stop")
    p.add_argument("--collect", action="store_true", help="only rewrite results.csv and fits.csv")
    p.add_argument("--wandb-sweep", action="store_true", help="write W&B sweep files instead of running")
    return p


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


def resume_args(folder: str | Path, fresh: bool = False) -> list[str]:
    """What a fit needs to continue in ``folder``: ``--ckpt_path <newest intact checkpoint>``
    for an interrupted run, ``--overwrite true`` for a run that left no checkpoint (or with
    ``fresh``), nothing for an empty folder."""
    run = RunFolder(folder)
    ckpt = None if fresh else run.resume_checkpoint()
    if ckpt is not None:
        return ["--ckpt_path", str(ckpt)]
    return ["--overwrite", "true"] if run.holds_run() else []


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to terminate the fit if the sweep process dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the signal handler still stops children
        pass


FIT_PREFIX = ["-m", "overparam_lit", "fit"]
"""What follows the interpreter in a fit command (:meth:`Plan.command`); a forked fit runs the rest."""


def fork_available() -> bool:
    """True where a fit can be forked from a worker that has imported once (Linux)."""
    return hasattr(os, "fork") and sys.platform.startswith("linux")


class _FitServer:
    """A worker that has imported torch, Lightning and the CLI once and forks one child per fit.

    ``here=True`` forks it from this process (the ``overparam-lit sweep`` process itself, which has
    imported them already and runs nothing else yet); otherwise it is a new Python process that
    imports them when it starts. It talks over two pipes, one JSON line per message: ``run`` (fork
    a fit: its arguments, working folder, environment and log file) answered by ``exit`` (its exit
    code once the fit ended), and ``kill`` (signal the running fit). The fit is the server's child
    and the server reaps it, so a signal never reaches a recycled process id.
    """

    def __init__(self, env: dict[str, str], here: bool, close: list[int],
                 preload: tuple[str, ...] = ()) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        if here:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            me = os.getpid()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the server process
                try:
                    for fd in (req_w, rep_r, *close):
                        os.close(fd)
                    _serve(req_r, rep_w, me, ",".join(preload))
                finally:
                    os._exit(0)
            self.pid = pid
        else:
            code = ("import sys; from overparam_lit.studies.sweep import _serve; "
                    "_serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])")
            argv = [sys.executable, "-c", code, str(req_r), str(rep_w), str(os.getpid()), ",".join(preload)]
            self.proc = subprocess.Popen(argv, pass_fds=(req_r, rep_w), env=env, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        os.close(req_r)
        os.close(rep_w)
        self.req, self.rep = req_w, rep_r
        self.alive = True
        self._buf = b""
        self._write = threading.Lock()

    def fds(self) -> list[int]:
        return [self.req, self.rep]

    def send(self, msg: dict[str, Any]) -> bool:
        data = (json.dumps(msg) + "\n").encode()
        with self._write:
            try:
                while data:
                    data = data[os.write(self.req, data):]
            except OSError:
                self.alive = False
        return self.alive

    def receive(self, timeout: float | None) -> dict[str, Any] | None:
        """The next reply; ``None`` after ``timeout`` s; raises ``EOFError`` when the server died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.rep], [], [], wait)
            if not ready:
                return None
            chunk = os.read(self.rep, 65536)
            if not chunk:
                self.alive = False
                raise EOFError("the fit server ended")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        """End the server (it exits when its request pipe closes) and reap it."""
        for fd in (self.req, self.rep):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.alive = False
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                deadline = time.monotonic() + 10
                while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        os.kill(self.pid, signal.SIGKILL)
                        os.waitpid(self.pid, 0)
                        break
                    time.sleep(0.02)


class _ForkedFit:
    """A fit running in a child of a :class:`_FitServer`, with ``subprocess.Popen``'s
    ``wait``/``terminate``/``kill``."""

    def __init__(self, server: _FitServer, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.server = server
        self.returncode: int | None = None
        check(cmd[1:4] == FIT_PREFIX, "a forked fit runs `python -m overparam_lit fit ...`", cmd[:4],
              "Use --launch process for other commands.")
        ok = server.send({"op": "run", "args": cmd[4:], "cwd": os.getcwd(), "env": env,
                          "log": str(Path(log).resolve())})
        if not ok:
            self.returncode = 1
            self._note(log, "its worker process had ended")

    @staticmethod
    def _note(log: Path, why: str) -> None:
        with open(log, "a") as fh:
            fh.write(f"\n[sweep] the fit did not finish: {why}\n")

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        try:
            while True:
                msg = self.server.receive(timeout)
                if msg is None:
                    raise subprocess.TimeoutExpired("fit", timeout or 0)
                if msg.get("op") == "exit":
                    self.returncode = int(msg["code"])
                    return self.returncode
        except EOFError:
            self.returncode = -signal.SIGKILL
            return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self.server.send({"op": "kill", "signal": int(sig)})

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _serve(req: int, rep: int, parent: int, preload: str = "") -> None:  # pragma: no cover - server process
    """The fit server's loop (see :class:`_FitServer`); returns when the sweep closes its pipe.
    ``preload``: more modules the fits import, comma-separated (``wandb`` when they log to W&B)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the fits; the sweep ends the server
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    if os.getppid() != parent:
        return
    import torch  # noqa: F401  (imported once here, not once per fit)

    import overparam_lit.cli  # noqa: F401

    for name in filter(None, preload.split(",")):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    buf = b""

    def reply(msg: dict[str, Any]) -> None:
        data = (json.dumps(msg) + "\n").encode()
        while data:
            data = data[os.write(rep, data):]

    def requests(timeout: float | None) -> list[dict[str, Any]] | None:
        """Messages that arrived within ``timeout`` s; ``None`` when the pipe closed."""
        nonlocal buf
        ready, _, _ = select.select([req], [], [], timeout)
        if ready:
            chunk = os.read(req, 65536)
            if not chunk:
                return None
            buf += chunk
        lines = buf.split(b"\n")
        buf = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]

    pending: list[dict[str, Any]] = []
    while True:
        if not pending:
            got = requests(None)
            if got is None:
                return
            pending += got
            continue
        msg = pending.pop(0)
        if msg.get("op") != "run":  # a kill for a fit that has ended
            continue
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            _run_child(msg, close=[req, rep], server=me)  # never returns
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
                break
            got = requests(0.05)
            if got is None:  # the sweep is gone: end the fit with it
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
                return
            for m in got:
                if m.get("op") == "kill":
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, int(m["signal"]))
                else:
                    pending.append(m)
        reply({"op": "exit", "code": os.waitstatus_to_exitcode(status)})


def _run_child(msg: dict[str, Any], close: list[int], server: int) -> None:  # pragma: no cover - the fit
    """Become ``python -m overparam_lit fit ARGS`` in a forked child: the working folder,
    environment and signals of a new process, stdout and stderr to the log, fresh random state,
    then the fit and a normal interpreter exit (threads joined, ``atexit`` run, streams flushed)."""
    code = 1
    interrupted = False
    try:
        for fd in close:
            os.close(fd)
        _die_with_parent()
        if os.getppid() != server:  # the server ended before the fit could ask to end with it
            os._exit(1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(msg["cwd"])
        os.environ.clear()
        os.environ.update(msg["env"])
        out = os.open(msg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _fresh_streams()
        _fresh_random_state()
        _own_exit_handlers()
        import importlib.util

        import __main__
        from overparam_lit.cli import main as cli_main

        spec = importlib.util.find_spec("overparam_lit.__main__")  # found, not run
        with contextlib.suppress(AttributeError, TypeError):
            __main__.__spec__ = spec  # Lightning's DDP launcher re-runs `python -m <spec> <argv>`
        sys.argv = [spec.origin if spec is not None else "overparam-lit", "fit", *msg["args"]]
        try:
            cli_main()
            code = 0
        except SystemExit as exit_:
            value = exit_.code
            if value is None or isinstance(value, int):
                code = value or 0
            else:
                print(value, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            import traceback

            traceback.print_exc()
            interrupted = True
            code = 130
        except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught exception
            sys.excepthook(*sys.exc_info())
            code = 1
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]  (join non-daemon threads, as at exit)
        import atexit

        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - the child never returns into the server's loop
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(code)


def _fresh_streams() -> None:  # pragma: no cover - runs in the forked fit
    """New ``sys.stdin/stdout/stderr`` over fds 0-2 (the inherited ones may be another program's
    capture objects), and logging handlers that wrote to the old ones write to the new ones."""
    import io
    import logging

    outs = {id(s) for s in (sys.stdout, sys.__stdout__) if s is not None}
    errs = {id(s) for s in (sys.stderr, sys.__stderr__) if s is not None}
    enc = {"encoding": "utf-8", "errors": "backslashreplace"}
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True,
                                                   write_through=False, **enc)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                                   **enc)
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is not None:
                if id(handler.stream) in outs:
                    handler.stream = sys.stdout
                elif id(handler.stream) in errs:
                    handler.stream = sys.stderr


def _own_exit_handlers() -> None:  # pragma: no cover - runs in the forked fit
    """Forget the exit handlers inherited from the server: they are the server's, run when it ends.
    Run in a fit they would undo what the server still shares with the next fit: W&B's temporary
    media folder, made once at import, would be deleted by the first fit that exits and the next
    fit's W&B tables would fail. Handlers and finalizers the fit registers itself still run."""
    import atexit
    import weakref

    atexit._clear()  # type: ignore[attr-defined]
    for inherited in list(weakref.finalize._registry):  # type: ignore[attr-defined]
        inherited.atexit = False
    weakref.finalize._registered_with_atexit = False  # type: ignore[attr-defined]


def _fresh_random_state() -> None:  # pragma: no cover - runs in the forked fit
    """The random state of a new process: Python's, numpy's and torch's global generators seeded
    from the system, not shared with the server or the other fits (a fit that sets no seed)."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        import numpy as np

        np.random.seed()
    if "torch" in sys.modules:
        import torch

        torch.seed()


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


class SweepLock(RunLock):
    """The run folder's lock (:class:`~overparam_lit.runfolder.RunLock`) on a sweep folder
    (``sweep.lock``): one ``overparam-lit sweep`` at a time runs or rewrites a sweep folder."""

    def _busy(self, info: dict[str, Any]) -> ConfigError:
        pid = info.get("pid", "?")
        since = f" since {info['started']}" if info.get("started") else ""
        return ConfigError(
            f"another `overparam-lit sweep` is running in this sweep folder (pid {pid} on host "
            f"{info.get('host', '?')}{since}; lock file {self.path}) (got {str(self.path.parent)!r}). "
            f"Wait for it to end, or stop it (kill {pid}: its finished fits are kept) and rerun to "
            "continue; if that process is gone (a host that crashed), delete the lock file.")


def _fit_problem(args: list[str], here: bool = True) -> str | None:
    """Why ``overparam-lit fit ARGS`` would refuse its input before training, in its own words
    (``None`` when it accepts it): the arguments go through the fit's parser and checks, and the
    data module, model, callbacks and optimizer are built, but no trainer (nothing is written).
    ``here=False`` (fits that run on other machines): the devices are not checked on this one."""
    import io

    import overparam_lit.cli.app as cli_module  # where OverparamCLI looks up check_trainer_config
    from overparam_lit.cli import OverparamCLI, find_config_error, resolve_config_args

    if not here:
        with _devices_unchecked(cli_module):
            return _fit_problem(args)

    class _Check(OverparamCLI):
        def instantiate_trainer(self, **kwargs: Any) -> Any:
            return None

    if os.getcwd() not in sys.path:  # as the fit's `main`: `--model my_study.Net` finds ./my_study.py
        sys.path.insert(0, os.getcwd())
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli = _Check(args=resolve_config_args(list(args)), run=False)
            cli._check_instantiated()
    except SystemExit as exit_:  # the parser's one-line message
        if exit_.code in (0, None):
            return None
        lines = [ln for ln in err.getvalue().splitlines() if ": error: " in ln]
        text = lines[-1].split(": error: ", 1)[1] if lines else err.getvalue().strip()
        return text or f"its parser refused the arguments (exit {exit_.code})"
    except Exception as error:  # noqa: BLE001 - anything else is the fit's own to report
        config_error = find_config_error(error)
        if config_error is not None:
            return str(config_error)
        if isinstance(error, (ValueError, TypeError)):  # a constructor that refuses a value
            return f"{type(error).__name__}: {error}"
        return None
    return None


@contextlib.contextmanager
def _devices_unchecked(cli_module: Any) -> Any:
    """The fit's trainer checks without those of this machine's accelerators and devices."""
    original = cli_module.check_trainer_config

    def elsewhere(trainer: Any) -> None:
        original({k: v for k, v in dict(trainer).items() if k not in ("accelerator", "devices")})

    cli_module.check_trainer_config = elsewhere
    try:
        yield
    finally:
        cli_module.check_trainer_config = original


def fit_problems(commands: list[list[str]], here: bool = True) -> list[str | None]:
    """:func:`_fit_problem` of each fit's arguments, found in a forked child on Linux (the sweep
    process itself starts no thread pool and keeps its state for the fit servers it forks), else
    in this process."""
    if not fork_available():
        return [_fit_problem(c, here) for c in commands]
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the checking child
        code = 1
        try:
            os.close(read_fd)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # log handlers keep the old streams: nothing reaches the sweep's output
                os.dup2(null, fd)
            import torch

            torch.set_num_threads(1)
            data = json.dumps([_fit_problem(c, here) for c in commands]).encode()
            while data:
                data = data[os.write(write_fd, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as fh:
        chunks.append(fh.read())
    os.waitpid(pid, 0)
    try:
        found = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        found = None
    return found if isinstance(found, list) and len(found) == len(commands) else [None] * len(commands)


class Sweep:
    """A planned sweep (see the module docstring)."""

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

    # ---- refusing bad input before anything is written -------------------------------------------
    def check_folder(self) -> None:
        """Refuse an ``--out`` that is a file, cannot be written, holds one fit's run, or holds
        another study's sweep (``sweep.json`` of a different plan): a sweep folder takes only a
        resume of its own study."""
        root = self.folder.root
        new = "Give --out a new folder (e.g. --out runs/<study>)."
        check(not root.exists() or root.is_dir(), "--out is a file, not a sweep folder", str(root), new)
        probe = root
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        check(probe.is_dir(), "a parent of --out is a file, not a folder", str(probe), new)
        if probe == root:
            check(os.access(root, os.W_OK | os.X_OK), "the sweep folder is not writable", str(root), new)
        else:  # the folder will be made: can its nearest existing parent take it?
            try:
                fd, tmp = tempfile.mkstemp(dir=probe, prefix=".overparam-lit-probe-")
                os.close(fd)
                os.unlink(tmp)
            except OSError as err:
                raise ConfigError(f"the sweep folder cannot be made inside {probe} "
                                  f"({err.strerror or err}) (got {str(root)!r}). {new}") from None
        saved = self.folder.read_spec()
        if not saved:
            run = RunFolder(root)
            mine = [p.name for p in (run.config_yaml, run.metrics_csv, run.checkpoints) if p.exists()]
            check(not mine, f"--out holds the run of one `overparam-lit fit` ({', '.join(mine)}), "
                  "not a sweep", str(root), new)
            return
        ours = self._identity(self.plan.configs, [f.record() for f in self.plan.fits])
        theirs = self._identity(saved.get("configs") or [], saved.get("fits") or [])
        if ours == theirs:
            return
        options = saved.get("options") or {}
        command = ["overparam-lit", "sweep", *[a for c in options.get("configs") or saved.get("configs") or []
                                               for a in ("-c", str(c))]]
        for key, flag in (("set", "--set"), ("grid", "--grid")):
            command += [a for v in options.get(key) or [] for a in (flag, str(v))]
        for key, flag in (("pack", "--pack"), ("width_groups", "--width-groups")):
            if options.get(key):
                command += [flag, str(options[key])]
        why = ("its config files differ" if ours[0] != theirs[0] else
               f"its plan has {len(theirs[1])} fit(s) and this one {len(ours[1])}"
               if len(ours[1]) != len(theirs[1]) else "the fits' arguments differ")
        raise ConfigError(
            f"--out holds another study's sweep ('{saved.get('name', '?')}', written by "
            f"`{shlex.join(command)} --out {root}`; {why}) (got {str(root)!r}). A sweep folder holds one "
            f"study: give this one a new --out folder to start it, or rerun that command (or "
            f"`overparam-lit sweep --out {root}`, which reuses its options) to resume that one.")

    @staticmethod
    def _identity(configs: list[Any], fits: list[dict[str, Any]]) -> tuple[Any, ...]:
        """What makes two plans the same study: the config files (by name) and every fit's name,
        stage, arguments and the fits it refers to; paths into the sweep folder (a later stage's
        arguments) count relative to it, so a moved sweep folder is still the same study."""
        names = [Path(str(c)).name for c in configs]
        root = str(Path(str(fits[0].get("folder", ""))).parent.parent) if fits else ""
        plan = []
        for f in fits:
            args = [a.replace(root, "{out}") if root and isinstance(a, str) else a
                    for a in f.get("args") or []]
            plan.append(json.loads(json.dumps([f.get("name"), f.get("stage"), args, f.get("deps")])))
        return names, plan

    def check_grid(self, fits: list[Fit]) -> None:
        """Build every fit that is to run (and refers to no earlier fit) through the fit's own parser
        and constructors, without training, and refuse the sweep with one message naming the
        first refused grid point."""
        checked = [f for f in fits if not f.deps]
        if not checked:
            return
        problems = fit_problems([self.plan.command(f)[len(FIT_PREFIX) + 1:] for f in checked],
                                here=self.args.executor == "local")
        refused = [(f, p) for f, p in zip(checked, problems, strict=True) if p]
        if not refused:
            return
        fit, problem = refused[0]
        point = [f"{k}={cli_text(v) if isinstance(v, (list, dict)) else v}" for k, v in fit.values.items()]
        point += [f"widths {fit.widths}"] if fit.widths is not None else []
        point += [f"seeds {fit.seeds}"] if fit.seeds is not None else []
        more = (f" {len(refused) - 1} more fit(s) are refused as well: "
                f"{', '.join(f.name for f, _ in refused[1:4])}{', ...' if len(refused) > 4 else ''}."
                if len(refused) > 1 else "")
        configs = " ".join(str(c) for c in self.plan.configs)
        raise ConfigError(
            f"the grid point {', '.join(point) or '(the base point)'} (fit {fit.name}) is refused by "
            f"`overparam-lit fit`: {problem.rstrip()}{'' if problem.rstrip().endswith('.') else '.'}{more} "
            f"Fix the sweep block's grid in {configs} (or the --grid/--set options); no fit was started.")

    # ---- status and files ----------------------------------------------------------------------
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

    @staticmethod
    def _record(fit: Fit) -> dict[str, Any]:
        return {"fit": fit.name, "stage": fit.stage, "values": fit.values, "seeds": fit.seeds,
                "widths": fit.widths}

    def _stage(self, fit: Fit) -> StageSpec:
        return self.spec.stage(fit.stage)

    def _value(self, fit: Fit, keys: tuple[str, ...]) -> Any:
        return next((fit.values[k] for k in keys if k in fit.values), None)

    def selected(self) -> list[Fit]:
        """The fits this call runs (``--fit``, else all)."""
        return [self.plan.fit(n) for n in self.args.fit] if self.args.fit else list(self.plan.fits)

    # ---- local execution -------------------------------------------------------------------------
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
        from overparam_lit.cli import resolve_wandb_mode

        mode = "auto"
        for cfg in self.plan.configs:
            with contextlib.suppress(Exception):
                wandb = (yaml.safe_load(Path(cfg).read_text()) or {}).get("wandb")
                if isinstance(wandb, dict) and wandb.get("mode"):
                    mode = str(wandb["mode"])
        modes = set()
        for fit in self.plan.fits:
            args = self.plan.command(fit)
            own = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--wandb.mode"]
            modes.add(resolve_wandb_mode(own[-1] if own else mode))
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

    def stop(self, signum: int, frame: Any) -> None:  # pragma: no cover - exercised by the kill test
        """Signal handler: stop the running fits; finished ones are kept."""
        self._stopping.set()
        self._signals += 1
        with self._lock:
            for proc in list(self._children):
                proc.terminate()
            self._lock.notify_all()
        print(f"[sweep] stopping on signal {signum}; finished fits are kept, rerun to continue", flush=True)

    # ---- submitit ------------------------------------------------------------------------------
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

    # ---- other outputs -------------------------------------------------------------------------
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


def _slurm_option(text: str) -> tuple[str, Any]:
    key, value = parse_set_arg(text)
    generic = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node",
               "stderr_to_stdout", "name")
    if key.startswith("slurm_") or key in generic:
        return key, value
    return f"slurm_{key}", value


def main(argv: list[str] | None = None) -> int:
    """``overparam-lit sweep``: see the module docstring. Bad input raises :class:`ConfigError`."""
    top_level = argv is None or list(sys.argv[1:]) == ["sweep", *argv]  # `overparam-lit sweep ...`
    args = build_parser().parse_args(argv)
    if args.out is None:
        raise ConfigError("--out is missing: the sweep folder that holds the study's fits and results "
                          f"(a new folder, or an earlier sweep's to resume it). Example: {EXAMPLE}")
    sweep = Sweep(args)
    sweep.top_level = top_level
    if args.dry_run:
        for i, fit in enumerate(sweep.selected()):
            deps = f" (after {', '.join(fit.deps)})" if fit.deps else ""
            print(f"{i:4d} [{fit.stage}] {fit.name}: {fit.num_members} member(s), {sweep.status(fit)}{deps}\n"
                  f"     {shlex.join(sweep.command(fit))}")
        return 0
    if args.wandb_sweep:
        sweep.check_folder()
        lock = sweep.lock()
        try:
            sweep.write_spec()
            for path in sweep.write_wandb_sweeps():
                print(f"[sweep] wrote {path}")
        finally:
            if lock is not None:
                lock.release()
        return 0
    if args.collect:
        sweep.check_folder()
        rows = sweep.collect()
        done = sum(sweep.status(f) == "done" for f in sweep.plan.fits)
        print(f"[sweep] {done}/{len(sweep.plan.fits)} fits done; wrote {sweep.folder.results} "
              f"({len(rows)} rows)")
        return 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sweep.stop)
        signal.signal(signal.SIGINT, sweep.stop)
    try:
        return sweep.run()
    finally:
        with contextlib.suppress(ValueError):
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


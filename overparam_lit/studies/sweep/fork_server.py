"""Fit servers (``--launch fork``): a worker that has imported torch, Lightning and the CLI once and
forks one child per fit, so that start-up is paid once per worker, not once per fit."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from overparam_lit.studies.sweep.fit_process import _die_with_parent, _run_child
from overparam_lit.utils import check

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
            code = ("import sys; from overparam_lit.studies.sweep.fork_server import _serve; "
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

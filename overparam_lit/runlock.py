"""The run folder's lock: one fit at a time in a folder, also across hosts of a shared file
system and after a ``kill -9`` (the lock dies with its process)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from overparam_lit.utils import ConfigError

__all__ = ["LOCK_ENV", "RunLock"]

LOCK_ENV = "OVERPARAM_LIT_RUN_LOCK"
"""Set by the process that holds a run folder's lock to ``<lock path>|<token>``; DDP child
processes inherit it and so recognise their parent's lock instead of refusing it."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """A lock file that keeps a second fit out of a busy run folder.

    ``acquire`` creates ``run.lock`` holding ``host``, ``pid``, ``token``, the start time and the
    command, and holds an exclusive ``fcntl.flock`` on it while the fit runs; a process that dies
    (even by SIGKILL) drops the flock with it, so its stale file is taken over. Where ``flock`` is
    missing the file is created with ``O_CREAT|O_EXCL`` and a stale one (dead pid, same host) is
    replaced. The holder exports :data:`LOCK_ENV`; DDP child processes inherit it and accept
    their parent's lock (:attr:`inherited` is then true and they hold nothing).

    Args:
        path: the lock file (``RunFolder(root).lock_file``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.held = False
        self.inherited = False
        self._fd: int | None = None

    def read(self) -> dict[str, Any]:
        """The lock file's record (empty when missing or unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _inherited_token(self) -> str | None:
        value = os.environ.get(LOCK_ENV, "")
        where, _, token = value.rpartition("|")
        if where and Path(where) == self.path.resolve():
            return token
        return None

    def _record(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}) + "\n"

    def _busy(self, info: dict[str, Any]) -> ConfigError:
        who = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
        since = f" since {info['started']}" if info.get("started") else ""
        return ConfigError(
            f"the run folder is in use by another fit ({who}{since}; lock file {self.path}) "
            f"(got {str(self.path.parent)!r}). Wait for that fit to end, or choose another "
            "--trainer.default_root_dir; if that process is gone (another host that crashed), delete "
            "the lock file.")

    def check_free(self) -> None:
        """Raise the "in use" :class:`ConfigError` when another fit holds the lock now; writes
        nothing (the file is only opened for reading). A lock this process inherited is free."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            info = self._wait_for_record()
            if info.get("token") != self._inherited_token():
                raise self._busy(info) from None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def acquire(self) -> RunLock:
        """Take the lock, or accept the parent's (DDP child); :class:`ConfigError` when busy."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        inherited = self._inherited_token()
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            fcntl = None  # type: ignore[assignment]
        if fcntl is None:  # pragma: no cover - not POSIX
            return self._acquire_exclusive(inherited)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                info = self._wait_for_record()
                if inherited is not None and info.get("token") == inherited:
                    self.inherited = True
                    return self
                raise self._busy(info) from None
            try:  # the holder may have unlinked the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, self._record().encode())
            os.fsync(fd)
            self._fd, self.held = fd, True
            os.environ[LOCK_ENV] = f"{self.path.resolve()}|{self.token}"
            return self
        raise ConfigError(f"the run folder's lock file keeps changing (got {str(self.path)!r}). "
                          "Another process is starting fits in this folder; stop it or use another folder.")

    def _wait_for_record(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for _ in range(50):  # the holder writes its record right after taking the flock
            info = self.read()
            if info.get("token"):
                break
            time.sleep(0.01)
        return info

    def _acquire_exclusive(self, inherited: str | None) -> RunLock:  # pragma: no cover - not POSIX
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = self._wait_for_record()
                if inherited is not None and info.get("token") == inherited:
                    self.inherited = True
                    return self
                stale = info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", 0)))
                if stale:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                raise self._busy(info) from None
            os.write(fd, self._record().encode())
            os.fsync(fd)
            os.close(fd)
            self.held = True
            os.environ[LOCK_ENV] = f"{self.path.resolve()}|{self.token}"
            return self
        raise ConfigError(f"the run folder's lock file keeps changing (got {str(self.path)!r}). "
                          "Another process is starting fits in this folder; stop it or use another folder.")

    def release(self) -> None:
        """Drop the lock (a no-op for an inherited or unheld lock)."""
        if not self.held:
            return
        if self.read().get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.held = False
        if os.environ.get(LOCK_ENV, "").endswith(f"|{self.token}"):
            del os.environ[LOCK_ENV]

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

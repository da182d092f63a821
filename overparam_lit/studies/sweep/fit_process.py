"""What runs in a fit's own process: it ends with the sweep (even when the sweep is killed), and a
fit forked from a fit server starts like a new ``python -m overparam_lit fit`` process (working
folder, environment, signals, streams, random state and exit handlers of its own)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to terminate the fit if the sweep process dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the signal handler still stops children
        pass


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

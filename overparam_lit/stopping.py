"""Stopping a fit on a scheduler's signal: promptly, resumable, and with an exit code that says
"run me again".

SLURM sends SIGTERM when a job reaches its time limit or is preempted, and, with ``--signal``,
SIGUSR1 or SIGUSR2 some time before (submitit asks for SIGUSR2). A fit that receives any of them
stops at the next optimizer step boundary, leaves its run folder as a kill would (the newest
checkpoint, made durable, and ``metrics.csv`` / ``members.csv`` cut back to it) and exits with
:data:`REQUEUE_EXIT_CODE`. Resuming it (``--ckpt_path``) gives exactly the rows and weights of an
uninterrupted run: the steps after the checkpoint run again.

The handler only records the signal. Long loops that run between two optimizer steps (Hessian
probes, region snapshots, an IMP level change) call :func:`check` once per product or batch, so
a signal does not wait for them; under DDP only the step boundary, where the ranks agree, stops
(:func:`local_checks`), since a rank that left a collective loop alone would hang the others.
This module imports no Lightning: the pure packages call :func:`check`.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["DIVERGED_EXIT_CODE", "REQUEUE_EXIT_CODE", "STOP_SIGNALS", "StopRequested", "TrainingDiverged",
           "check", "clear", "install", "local_checks", "requested", "signal_name", "uninstall"]

REQUEUE_EXIT_CODE = 75
"""Exit code of a fit stopped by a signal: ``EX_TEMPFAIL`` of ``sysexits.h`` ("try again
later"). ``overparam-lit sweep`` and its SLURM jobs resume such a fit; a batch script can requeue
itself on it (``[ $? -eq 75 ] && scontrol requeue $SLURM_JOB_ID``)."""

DIVERGED_EXIT_CODE = 3
"""Exit code of a fit whose training loss became NaN or infinite (:class:`TrainingDiverged`): not
bad input (2), and not worth a retry with the same settings; ``overparam-lit sweep`` records the
fit as failed without retrying it."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (for every member); the message names the step
    and the last checkpoint before it. The CLI exits with :data:`DIVERGED_EXIT_CODE`."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_state: dict[str, object] = {"signum": None, "local": True}
_previous: dict[int, object] = {}  # the handlers before the first install()


class StopRequested(BaseException):
    """A stop signal was received (a ``BaseException``, like ``KeyboardInterrupt``, so that no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    def __str__(self) -> str:
        return f"stopped on {signal_name(self.signum)}"


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _record(signum: int, frame: object) -> None:
    if _state["signum"] is None:  # the first signal names the stop; later ones change nothing
        _state["signum"] = int(signum)


def install() -> bool:
    """Record :data:`STOP_SIGNALS` instead of dying on them (only possible in the main thread;
    returns whether the handlers are in place)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in STOP_SIGNALS:
        previous = signal.signal(signum, _record)
        if previous is not _record:
            _previous.setdefault(int(signum), previous)
    return True


def uninstall() -> None:
    """Put back the handlers that were in place before the first :func:`install` (the CLI does
    this when a fit ends, so a process that ran a fit in-line dies on SIGTERM again)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in list(_previous.items()):
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]
    _previous.clear()


def requested() -> int | None:
    """The signal received, or ``None``."""
    signum = _state["signum"]
    return None if signum is None else int(signum)  # type: ignore[call-overload]


def clear() -> None:
    """Forget a received signal (a new fit in the same process starts clean)."""
    _state["signum"] = None


def check() -> None:
    """Raise :class:`StopRequested` if a stop signal was received and loops may stop on their own
    (see :func:`local_checks`)."""
    signum = _state["signum"]
    if signum is not None and _state["local"]:
        raise StopRequested(int(signum))  # type: ignore[call-overload]


def local_checks(enabled: bool) -> None:
    """Whether :func:`check` may stop inside a loop (``False`` under DDP: every rank must leave a
    collective loop at the same point, which only the step boundary guarantees)."""
    _state["local"] = bool(enabled)

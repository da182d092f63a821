"""``overparam-lit`` commands: the registry of extra subcommands (``sweep``, ``plot``, ``report``,
``export``, ``reproductions``) and :func:`main`, the console entry point."""

from __future__ import annotations

import atexit
import gc
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from overparam_lit import stopping
from overparam_lit.cli.app import OverparamCLI
from overparam_lit.cli.config_files import resolve_config_args
from overparam_lit.cli.console import quiet_console, stop_message
from overparam_lit.cli.explain import _ARGV
from overparam_lit.utils import ConfigError, check

E = TypeVar("E", bound=BaseException)


@dataclass(frozen=True)
class Command:
    """An ``overparam-lit`` subcommand that is not a Trainer method.

    Args:
        name: the word after ``overparam-lit``.
        run: called with the remaining arguments; returns the exit code (``None`` is 0).
        help: one line for ``overparam-lit --help``.
    """

    name: str
    run: Callable[[list[str]], int | None]
    help: str = ""


COMMANDS: dict[str, Command] = {}
"""Registered extra subcommands (``export``, ``sweep``, ``plot``, ``report``, ...), checked by
:func:`main` before LightningCLI parses anything."""


def register_command(name: str, run: Callable[[list[str]], int | None], help: str = "") -> Command:
    """Add ``overparam-lit NAME ...``: ``run(argv)`` gets the arguments after ``NAME``.

    The Lightning subcommands (``fit``, ``validate``, ``test``, ``predict``) cannot be replaced.
    """
    check(name not in LightningCLI.subcommands(), "a command name is taken by a Lightning subcommand", name,
          "Choose another name.")
    check(bool(re.fullmatch(r"[a-z][a-z0-9_-]*", name)), "a command name must be one lower-case word", name,
          "Use e.g. 'export'.")
    COMMANDS[name] = Command(name, run, help)
    return COMMANDS[name]


def find_cause(err: BaseException | None, kind: type[E]) -> E | None:
    """The exception of type ``kind`` behind ``err`` (jsonargparse and Lightning wrap exceptions)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The :class:`ConfigError` behind ``err``."""
    return find_cause(err, ConfigError)


def _help_with_commands() -> None:
    if COMMANDS:
        width = max(len(n) for n in COMMANDS)
        print("\nother commands (overparam-lit COMMAND --help):")
        for cmd in COMMANDS.values():
            print(f"  {cmd.name.ljust(width)}  {cmd.help}")


def _export(argv: list[str]) -> int | None:
    from overparam_lit.models.export import main as export_main

    return export_main(argv)


register_command("export", _export, "write one member of a members fit as a checkpoint of its model class")


def _sweep(argv: list[str]) -> int | None:
    from overparam_lit.studies.sweep import main as sweep_main

    return sweep_main(argv)


def _plot(argv: list[str]) -> int | None:
    from overparam_lit.studies.plot import main as plot_main

    return plot_main(argv)


def _report(argv: list[str]) -> int | None:
    from overparam_lit.studies.report import main as report_main

    return report_main(argv)


register_command("sweep", _sweep, "run a study config's grid of fits (packed into member fits), resumable")
register_command("plot", _plot, "draw one figure of finished runs or a sweep and print its numbers as JSON")
register_command("report", _report, "write one self-contained HTML page of every figure of a sweep folder")


def _reproductions(argv: list[str]) -> int | None:
    from overparam_lit.studies.reproductions import main as reproductions_main

    return reproductions_main(argv)


register_command("reproductions", _reproductions,
                 "the table of every published number the README or a config quotes, beside its study's")


_EXIT_FREEZE: list[bool] = []


def _freeze_long_lived() -> None:
    """In the ``overparam-lit`` process (``main()`` reading ``sys.argv``): keep the cycle collector
    off the objects that live until the process ends.

    What exists now (the imports, frozen already by :mod:`overparam_lit.cli`, and anything a
    launcher made before calling :func:`main`) is frozen, so the collections of a run never walk
    it. At exit, after the handlers the run registered (W&B's teardown), everything left is frozen
    too: the interpreter's last collections would walk it all only to drop it (about a second).
    Files and W&B runs are closed by then, and what is still reachable is freed as the interpreter
    clears its modules. Callers that pass ``args`` (tests, in their own process) keep their
    collector as it is."""
    gc.freeze()
    if not _EXIT_FREEZE:
        atexit.register(gc.freeze)  # registered first, so it runs after the handlers of the run
        _EXIT_FREEZE.append(True)


def main(args: list[str] | None = None) -> int | None:
    """Console entry point: run a registered command or the CLI, printing bad-input errors as
    one paragraph (exit code 2) and a diverged training loss as one (exit code 3). A registered
    command's non-zero exit code is raised as ``SystemExit``, so ``python -m overparam_lit``
    passes it on as well.

    The working folder is importable, so ``--model my_study.MyNet`` finds ``./my_study.py``;
    ``-c callbacks/imp.yaml`` falls back to the packaged fragment when the path does not exist.
    """
    if args is None:
        _freeze_long_lived()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        try:
            code = COMMANDS[argv[0]].run(argv[1:])
        except ConfigError as err:
            print(f"overparam-lit {argv[0]}: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        if code:
            raise SystemExit(code)
        return 0
    quiet_console()
    argv = resolve_config_args(argv)
    _ARGV[:] = argv
    if args is None:
        sys.argv[1:] = argv  # DDP children re-run sys.argv: they see the resolved paths too
    try:
        OverparamCLI(args=None if args is None else argv)
    except (stopping.StopRequested, SIGTERMException) as stop:
        if OverparamCLI._launch_rank_zero():
            print(stop_message(stop), file=sys.stderr, flush=True)
        raise SystemExit(stopping.REQUEUE_EXIT_CODE) from None
    except SystemExit:
        if argv[:1] in (["-h"], ["--help"]):
            _help_with_commands()
        raise
    except Exception as err:
        diverged = find_cause(err, stopping.TrainingDiverged)
        if diverged is not None:
            print(f"overparam-lit: training diverged: {diverged}", file=sys.stderr)
            raise SystemExit(stopping.DIVERGED_EXIT_CODE) from None
        config_error = find_config_error(err)
        if config_error is None:
            raise
        print(f"overparam-lit: error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from None
    return None

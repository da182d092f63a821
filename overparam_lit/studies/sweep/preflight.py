"""Bad input ends before the first fit: a sweep folder that cannot take this study, and grid points
that ``overparam-lit fit`` would refuse (each fit that is to run is built through the fit's own
parser and constructors, without training)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.grid import cli_text
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.spec import Fit, Plan
from overparam_lit.studies.sweep.fork_server import FIT_PREFIX, fork_available
from overparam_lit.utils import ConfigError, check


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


class Preflight:
    """The checks of a sweep's input that run before anything is written: the ``--out`` folder and
    the grid. Part of :class:`~overparam_lit.studies.sweep.planned.Sweep`."""

    args: argparse.Namespace
    folder: SweepFolder
    plan: Plan

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

"""``overparam-lit``: a LightningCLI that links data to model, guards run folders and sets up logging.

Usage: ``overparam-lit fit -c configs/quickstart.yaml [-c callbacks/hessian.yaml] [--key value]``.

Before a fit touches its run folder, every check runs: the config (trainer devices and
accelerator, epochs, seed, learning rate), the checkpoint given with ``--ckpt_path`` (readable,
built for the same model, with the study callbacks whose state it holds) and the folder itself
(writable, not in use by another fit, holding no earlier run unless this fit resumes it or
``--overwrite true`` clears it). Bad input ends in one paragraph and exit code 2.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

import overparam_lit.callbacks  # noqa: F401  (registers study callbacks for short names)
import overparam_lit.data  # noqa: F401  (registers data modules for short names)
import overparam_lit.models  # noqa: F401  (registers width families for short names)
from overparam_lit import stopping
from overparam_lit.checkpointing import AtomicCheckpointIO, EpochBoundary, RunCheckpoint, StopOnSignal
from overparam_lit.compat import wandb_run_if_started
from overparam_lit.data.base import ArrayDataModule
from overparam_lit.loggers import MetricsCSVCheckpoint, RunCSVLogger, RunWandbLogger, flatten_config
from overparam_lit.models.base import OverparamModule
from overparam_lit.models.stack import parse_seeds, parse_widths
from overparam_lit.runfolder import RunFolder, RunLock, read_checkpoint
from overparam_lit.threads import ENV as THREADS_ENV
from overparam_lit.threads import (
    apply_threads,
    available_cores,
    choose_threads,
    load_average,
    torch_default_threads,
)
from overparam_lit.utils import ConfigError, check

RUN_DIR_ENV = "OVERPARAM_LIT_RUN_DIR"
"""The default run folder chosen by the launching process; DDP child processes inherit it."""

FRAGMENTS = Path(__file__).resolve().parent / "fragments"
"""Packaged copies of the repository's ``callbacks/*.yaml`` and ``configs/*.yaml`` (links to them
in a source checkout), used when ``-c callbacks/imp.yaml`` is not found from the working folder."""

MODEL_CHANGING_CALLBACKS = {"IterativeMagnitudePruning": "imp", "TicketStart": "ticket", "Widen": "widen"}
"""Callbacks whose checkpoint state changes the model (masks, a widened network), with their
fragments: resuming without them is refused."""

LATE_CHECKED = ("input_shape", "num_classes", "task", "seeds", "widths")
"""Model hyperparameters a checkpoint is compared on only once the model is built (they are linked
from the data module or resolved from the config's value)."""


# ---- extra subcommands ---------------------------------------------------------------------------
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


# ---- W&B options -------------------------------------------------------------------------------
@dataclass
class WandbOptions:
    """Weights & Biases settings.

    Args:
        mode: ``auto`` is online when an API key is configured (``WANDB_API_KEY`` or
            ``wandb login``) and offline otherwise; ``offline`` writes a local run to sync later
            with ``wandb sync``; ``disabled`` turns W&B off (CSV metrics are always written).
            A ``WANDB_MODE`` environment variable overrides ``auto``.
        project: W&B project.
        name: run name (default: the run folder's name).
        group: run group, e.g. a sweep's name, so dashboards group its runs (default: the sweep
            folder of a sweep point ``OUT/points/<point>``).
        tags: run tags (the model and data class names are always added).
    """

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "overparam-lit"
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


def wandb_has_credentials() -> bool:
    """True when an API key is configured through the environment or ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """Turn ``auto`` into ``online`` or ``offline``; never prompts and never waits on a network."""
    env = os.environ.get("WANDB_MODE", "").lower()
    if mode == "auto":
        if env in ("online", "offline", "disabled"):
            return env
        if env == "dryrun":
            return "offline"
        return "online" if wandb_has_credentials() else "offline"
    return mode


def make_loggers(root: Path, options: WandbOptions, run_config: Mapping[str, Any] | None = None,
                 job_type: str | None = None) -> list[Logger]:
    """The CSV logger of ``root/metrics.csv`` (first, so the trainer's log folder is ``root``)
    and, unless disabled, a W&B run whose config is ``run_config`` (flat dotted keys)."""
    loggers: list[Logger] = [RunCSVLogger(root)]
    mode = resolve_wandb_mode(options.mode)
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"
        root = Path(root)
        group = options.group
        if group is None and root.parent.name == "points":  # a fit of `overparam-lit sweep` (OUT/points)
            group = root.parent.parent.name or None
        tags = list(options.tags)
        for key in ("model.class_path", "data.class_path"):
            if run_config and run_config.get(key):
                tags.append(str(run_config[key]).rsplit(".", 1)[-1])
        loggers.append(RunWandbLogger(  # an absolute folder: W&B's service process has its own cwd
            run_config=run_config, save_dir=str(root.resolve()), project=options.project,
            name=options.name or root.name, group=group, tags=list(dict.fromkeys(tags)) or None,
            job_type=job_type, offline=mode == "offline", log_model=False,
        ))
    return loggers


# ---- parser -----------------------------------------------------------------------------------
_ARGV: list[str] = []

DEBUG_ENV = "OVERPARAM_LIT_DEBUG"
"""``OVERPARAM_LIT_DEBUG=1`` prints jsonargparse's full message below the one-line explanation of a
parser error (``JSONARGPARSE_DEBUG`` shows jsonargparse's own output and traceback instead)."""

_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonnet")


@dataclass
class ParserProblem:
    """What a jsonargparse error message says, read once (:func:`read_parser_message`).

    Attributes:
        key: the parser key it names (``model``, ``trainer.callbacks``, ``config``,
            ``trainer.max_epochs``).
        sub: the nested key given under it (``widths`` of ``--model.widths``).
        value: the value given (as parsed from the message).
        classes: the class paths tried, in order (``lightning.Callback`` where no callback is
            configured).
        inner_class: the class of a class-valued option inside ``key`` (the optimizer of
            ``--model.optimizer.init_args.lr``).
        option: an option name that a class does not accept.
        nested_key: the option inside a class whose value was refused (``widths``).
        unknown_name: a short class name that names no known class.
        import_error: why a class path did not import.
        missing_file: a config file that does not exist.
        unrecognized: the arguments argparse did not recognise.
        reason: the innermost line of the message.
    """

    key: str = ""
    sub: str = ""
    value: Any = None
    classes: list[str] = field(default_factory=list)
    inner_class: str | None = None
    option: str | None = None
    nested_key: str | None = None
    unknown_name: str | None = None
    import_error: str | None = None
    missing_file: str | None = None
    unrecognized: list[str] = field(default_factory=list)
    reason: str = ""


_BOILERPLATE = re.compile(r"^(- )?(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|"
                          r"Given value( type)?: .*|Expected a <class 'NoneType'>|Expected a path but .*|"
                          r"Problem with given class_path .*|Parser key .*)$")


def _literal(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_parser_message(message: str) -> ParserProblem:
    """Read the parts of a jsonargparse error message that :func:`explain_parser_error` needs."""
    p = ParserProblem()
    text = message.strip()
    m = re.match(r"unrecognized arguments: (.*)", text, re.S)
    if m:
        p.unrecognized = m.group(1).split()
        p.reason = text
        return p
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    m = re.match(r'Parser key "([^"]+)":\s*(.*)', lines[0]) if lines else None
    if m:
        p.key = m.group(1)
    for line in lines:
        s = line.strip().removeprefix("- ")
        if m := re.match(r"Given value: NestedArg\(key='([^']*)', val=(.*)\)$", s):
            p.sub, p.value = m.group(1), _literal(m.group(2))
        elif m := re.match(r"Given value: (.*)$", s):
            p.value = m.group(1)  # the last (outermost) one wins
        if m := re.search(r"Problem with given class_path '([^']+)'", s):
            p.classes.append(m.group(1))
        if (m := re.search(r"Option '([^']+)' is not accepted", s)) and p.option is None:
            p.option = m.group(1)
        if (m := re.search(r"Got value: Namespace\(class_path='([^']+)'", s)) and p.inner_class is None:
            p.inner_class = m.group(1)
        if (m := re.match(r'Parser key "([^"]+)":', s)) and line != lines[0] and p.nested_key is None:
            p.nested_key = m.group(1)
        if (m := re.search(r"Expected a dot import path string: (\S+)", s)) and p.unknown_name is None:
            p.unknown_name = m.group(1)
        if (m := re.search(r"(No module named '[^']+'|module '[^']+' has no attribute '[^']+'|"
                           r"cannot import name .*)", s)) and p.import_error is None:
            p.import_error = m.group(1)
        if m := re.search(r"File does not exist: '([^']+)'", s):
            p.missing_file = m.group(1)
    inner = [line for line in lines[1:] if not _BOILERPLATE.match(line.strip())]
    p.reason = (inner[0] if inner else lines[0] if lines else text).strip().removeprefix("- ")
    return p


def _close(word: str, choices: Any, cutoff: float = 0.6) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(dict.fromkeys(choices)), n=1, cutoff=cutoff)
    return found[0] if found else None


def _mean(word: str, choices: Any, quote: str = "'") -> str:
    near = _close(word, choices)
    return f"; did you mean {quote}{near}{quote}?" if near else ""


def _import(class_path: str) -> Any:
    from jsonargparse._util import import_object

    try:
        return import_object(class_path)
    except Exception:  # noqa: BLE001  (an explanation is best effort)
        return None


def _params(cls: Any) -> dict[str, Any]:
    """The options a class accepts, with their parameter data (name, annotation, default)."""
    from jsonargparse._parameter_resolvers import get_signature_parameters

    try:
        return {p.name: p for p in get_signature_parameters(cls, None, logger=False)}
    except Exception:  # noqa: BLE001
        return {}


def _known_classes(typehint: Any) -> list[str]:
    """Short names of the classes a class-valued option accepts."""
    from jsonargparse._typehints import get_all_subclass_paths

    try:
        return [p.rsplit(".", 1)[-1] for p in get_all_subclass_paths(typehint)]
    except Exception:  # noqa: BLE001
        return []


def _typehint(parser: Any, key: str) -> Any:
    from jsonargparse._subcommands import find_action

    action = find_action(parser, key)
    return getattr(action, "_typehint", None)


def describe_type(typehint: Any) -> str:
    """A type as a person reads it: ``list[int] | None`` -> 'a list of integers (or null)'."""
    import collections.abc
    import types
    import typing

    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    origin, args = typing.get_origin(typehint), typing.get_args(typehint)
    if origin in (typing.Union, types.UnionType):
        kinds = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" (or null)" if type(None) in args else "")
    if typehint in names:
        return names[typehint]
    if origin in (list, tuple, set, typing.Sequence, collections.abc.Sequence):
        inner = args[0] if args else None
        return f"a list of {plural.get(inner, 'values')}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return getattr(typehint, "__name__", str(typehint))


def _example(typehint: Any, value: Any, default: Any) -> tuple[str | None, bool]:
    """A value of ``typehint``: the value given in the form the type needs (``16,64`` ->
    ``[16, 64]``, second item True), else the default or an example of the type (False)."""
    import collections.abc
    import inspect
    import typing

    text = str(value).strip()

    def accepts_list(t: Any) -> bool:
        o = typing.get_origin(t)
        if o in (list, tuple, set, typing.Sequence, collections.abc.Sequence):
            return True
        return o is not typing.Literal and o is not None and any(accepts_list(a) for a in typing.get_args(t))

    if accepts_list(typehint) and not isinstance(value, list):
        parts = [x.strip() for x in re.split(r"[,\s]+", text.strip("[]() ")) if x.strip()]
        if parts and all(re.fullmatch(r"-?\d+(\.\d*)?(e-?\d+)?", x) for x in parts):
            return f"[{', '.join(parts)}]", True
    if default is not None and default is not inspect.Parameter.empty:
        return (str(default).lower() if isinstance(default, bool) else str(default)), False
    args = [a for a in typing.get_args(typehint) if a is not type(None)] or [typehint]
    examples = {int: "3", float: "0.1", bool: "true"}
    if args[0] in examples:
        return examples[args[0]], False
    inner = typing.get_args(args[0])
    if accepts_list(args[0]) and inner and inner[0] in (int, float):
        return ("[1, 2]" if inner[0] is int else "[0.1, 0.2]"), False
    return None, False


def _shell(value: Any) -> str:
    """A value as it is typed after ``--key`` in a shell."""
    if isinstance(value, (list, tuple)):
        value = "[" + ", ".join(str(v) for v in value) + "]"
    text = str(value)
    return f"'{text}'" if re.search(r"[\s\[\]{}*?$&|;<>()'\"]", text) else text


def _fragments_with(option: str) -> list[tuple[str, str]]:
    """``(callback class, fragment)`` of every packaged callback fragment whose callback accepts
    ``option`` (all of them when ``option`` is empty)."""
    found = []
    for path in sorted((FRAGMENTS / "callbacks").glob("*.yaml")):
        m = re.search(r"class_path:\s*(\S+)", path.read_text())
        cls = _import(m.group(1)) if m else None
        if cls is not None and (not option or option in _params(cls)):
            found.append((cls.__name__, f"callbacks/{path.name}"))
    return found


def _explain_unrecognized(parser: Any, p: ParserProblem) -> tuple[str, str] | None:
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    for token in p.unrecognized:
        if not token.startswith("-") and (token.endswith(_FILE_SUFFIXES) or Path(token).is_file()
                                          or Path(resolve_fragment(token)).is_file()):
            return (f"unrecognized argument {token}: a config or fragment file is given with -c",
                    f"Write -c {token}.")
        if token.startswith("--"):
            name, _, value = token.partition("=")
            near = _close(name, options)
            if near:
                after = p.unrecognized[p.unrecognized.index(token) + 1:]
                given = value or (after[0] if after and not after[0].startswith("-") else "VALUE")
                return f"unrecognized option {name}; did you mean {near}?", f"Write {near} {given}."
    return (f"unrecognized arguments: {' '.join(p.unrecognized)}",
            "Each value follows the option it sets (--model.width 64), and config files follow -c.")


def _explain_missing_file(p: ParserProblem) -> tuple[str, str]:
    missing = Path(str(p.missing_file))
    given = str(missing)
    for i, arg in enumerate(_ARGV):
        value = _ARGV[i + 1] if arg in ("-c", "--config") and i + 1 < len(_ARGV) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if value and Path(value).absolute() == missing.absolute():
            given = value
    folder = Path(given).parent
    candidates = [str(folder / f.name) for f in (folder.iterdir() if folder.is_dir() else [])
                  if f.suffix in _FILE_SUFFIXES]
    if not Path(given).is_absolute() and (FRAGMENTS / folder).is_dir():
        candidates += [str(folder / f.name) for f in sorted((FRAGMENTS / folder).glob("*.yaml"))]
    near = _close(given, candidates)
    if near:
        return f"config file {given} not found; did you mean {near}?", f"Write -c {near}."
    packaged = {d: ", ".join(f.stem for f in sorted((FRAGMENTS / d).glob("*.yaml")))
                for d in ("configs", "callbacks")}
    return (f"config file {given} not found",
            f"Packaged configs (-c configs/NAME.yaml): {packaged['configs']}; fragments "
            f"(-c callbacks/NAME.yaml): {packaged['callbacks']}.")


def _explain_callback_option(p: ParserProblem) -> tuple[str, str]:
    option = str(p.option)
    given = f"--trainer.callbacks.{p.sub or option}"
    value = _shell(p.value)
    last = next((c for c in p.classes if c.rsplit(".", 1)[-1] != "Callback"), None)
    owners = _fragments_with(option)
    owner = " or ".join(f"{name} ({fragment})" for name, fragment in owners)
    if last is None:
        if owners:
            return (f"{given} edits a callback, but no callback is configured; {option} is an option of "
                    f"{owner}", f"Add its fragment before the option: -c {owners[0][1]} {given} {value}.")
        every = {o: n for n, _ in _fragments_with("") for o in _params(_import(_class_of(n)))}
        near = _close(option, every)
        hint = f"; did you mean {near!r} ({every[near]})?" if near else ""
        return (f"{given} edits a callback, but no callback is configured, and no packaged callback has an "
                f"option {option!r}{hint}", "Add the callback's fragment first, e.g. -c callbacks/imp.yaml, "
                "then its options.")
    name = last.rsplit(".", 1)[-1]
    if owners:
        return (f"{given} was applied to {name}, the callback added last before it, which has no option "
                f"{option!r}; {option} is an option of {owner}",
                f"Give {given} right after -c {owners[0][1]} (fragments and --trainer.callbacks+= append in "
                "command-line order).")
    return (f"{given} was applied to {name}, the callback added last before it, which has no option "
            f"{option!r}{_mean(option, _params(_import(last)))}",
            "Fix the name, or give the option right after the -c fragment of the callback it is meant for.")


def _class_of(short: str) -> str:
    for path in (FRAGMENTS / "callbacks").glob("*.yaml"):
        m = re.search(r"class_path:\s*(\S+)", path.read_text())
        if m and m.group(1).endswith("." + short):
            return m.group(1)
    return short


def _explain_import(p: ParserProblem) -> tuple[str, str]:
    import importlib

    error = str(p.import_error)
    path = next((c for c in p.classes if c.split(".")[0] in error), p.unknown_name or str(p.value))
    missing = re.match(r"No module named '([^']+)'", error)
    if missing and path.split(".")[0] == missing.group(1).split(".")[0]:
        module = missing.group(1).replace(".", "/")
        fix = (f"Run from the folder that holds {module}.py, or add that folder to PYTHONPATH "
               "(PYTHONPATH=/path/to/folder overparam-lit ...).")
    elif missing:
        fix = f"Install the package that provides {missing.group(1)!r}."
    else:
        module_name, _, name = path.rpartition(".")
        try:
            names = [n for n in dir(importlib.import_module(module_name)) if not n.startswith("_")]
        except Exception:  # noqa: BLE001
            names = []
        near = _close(name, names)
        fix = f"Did you mean {module_name}.{near}?" if near else "Check the class path."
    return f"cannot import {path!r}: {error}", fix


def _explain_unknown_class(parser: Any, p: ParserProblem, outer: Any, flag: str) -> tuple[str, str]:
    param = _params(outer).get(p.nested_key or "") if outer is not None and p.nested_key else None
    known = _known_classes(param.annotation if param is not None else _typehint(parser, p.key))
    what, name = flag.lstrip("-"), str(p.unknown_name)
    near = _close(name, known)
    if near:
        return f"no {what} class {name!r}; did you mean {near!r}?", f"Write {flag} {near}."
    listed = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return (f"no {what} class {name!r}", (f"Use one of {listed}, or " if known else "Use ")
            + "a full import path such as my_study.MyNet.")


def _is_base_class(cls: Any, typehint: Any) -> bool:
    """Whether ``cls`` is the base class a class-valued option stands for (no class was chosen)."""
    from jsonargparse._typehints import get_class_types

    try:
        return cls in get_class_types(typehint)
    except Exception:  # noqa: BLE001
        return False


def _explain_class_option(p: ParserProblem, outer: Any, flag: str) -> tuple[str, str]:
    """An option that the class of ``--KEY`` (or of a class-valued option inside it) lacks."""
    cls, parts = outer, (p.sub.split(".") if p.sub else [str(p.option)])
    if p.inner_class:  # e.g. --model.optimizer.init_args.lrr: the optimizer's class lacks it
        owner, inner = parts[0], _import(p.inner_class)
        param = _params(outer).get(owner)
        if inner is not None and param is not None and _is_base_class(inner, param.annotation):
            known = _known_classes(param.annotation)
            example = "Adam" if "Adam" in known else known[0] if known else "CLASS"
            return (f"{flag} sets an option of the {owner}, but no {owner} class is chosen",
                    f"Give the class first: --{p.key}.{owner} {example} {flag} {_shell(p.value)}.")
        cls = inner if inner is not None else cls
    valid, name = _params(cls), getattr(cls, "__name__", str(cls))
    near = _close(str(p.option), valid)
    if near and not p.sub:  # from a config file: the value given is the whole class spec
        value = _find_value(p.value, str(p.option))
        return (f"{name} has no option {p.option!r}; did you mean {near!r}?",
                f"Rename {p.option} to {near} under {p.key}: init_args: in the config file"
                + ("." if value is None else f" ({near}: {value})."))
    if near:
        fixed = "--" + ".".join([p.key, *parts[:-1], near])
        return (f"{name} has no option {p.option!r}; did you mean {near!r}?",
                f"Write {fixed} {_shell(p.value)}.")
    listed = ", ".join(n for n in valid if n not in ("input_shape", "num_classes", "task"))
    return f"{name} has no option {p.option!r}", f"Its options: {listed}."


def _find_value(spec: Any, option: str) -> Any:
    """The value of ``option`` in a class spec read from a config file, if it is there."""
    spec = _literal(spec) if isinstance(spec, str) else spec
    if isinstance(spec, dict):
        args = spec.get("init_args") if isinstance(spec.get("init_args"), dict) else spec
        return args.get(option)
    return None


def _explain_value(typehint: Any, what: str, p: ParserProblem, flag: str, default: Any,
                   helps: str) -> tuple[str, str]:
    example, exact = _example(typehint, p.value, default)
    fix = (f"Write {'' if exact else 'e.g. '}{flag} {_shell(example)}." if example
           else f"See {helps} for the values it takes.")
    return f"{what} must be {describe_type(typehint)} (got {p.value!r})", fix


def explain_parser_error(parser: Any, message: str) -> tuple[str, str] | None:
    """``(message, fix)`` for a jsonargparse error: the one cause, with a did-you-mean where a near
    name exists (options of the class, option strings, class names, file names) and the command
    line that fixes it; ``None`` when the message is of no known kind.

    The message is read once (:func:`read_parser_message`); the names offered come from the
    parser's actions and the signatures of the classes involved, not from the message.
    """
    p = read_parser_message(message)
    if p.unrecognized:
        return _explain_unrecognized(parser, p)
    if p.missing_file:
        return _explain_missing_file(p)
    if p.key == "trainer.callbacks" and p.option:
        return _explain_callback_option(p)
    if p.import_error:
        return _explain_import(p)
    flag = "--" + ".".join(x for x in (p.key, p.sub) if x)
    outer = _import(p.classes[0]) if p.classes else None  # the class of --KEY (model, data)
    if p.unknown_name:
        return _explain_unknown_class(parser, p, outer, flag)
    if p.option and outer is not None:
        return _explain_class_option(p, outer, flag)
    if p.nested_key and outer is not None and (param := _params(outer).get(p.nested_key)) is not None:
        return _explain_value(param.annotation, f"{outer.__name__} option {p.nested_key!r}", p, flag,
                              param.default, f"--{p.key}.help")
    typehint = _typehint(parser, p.key) if p.key else None
    if typehint is not None and not p.classes and p.value is not None:
        return _explain_value(typehint, f"--{p.key}", p, flag, None, "--help")
    return None


class OverparamArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors print one line, message first, with the fix
    (:func:`explain_parser_error`) and without the usage (``--help`` shows it); jsonargparse's full
    message follows with ``OVERPARAM_LIT_DEBUG=1``."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not getattr(self, "exit_on_error", True) or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            explained = explain_parser_error(parser, message)
        except Exception:  # noqa: BLE001  (never hide the parser's message behind a failed explanation)
            explained = None
        if explained is None:
            first = read_parser_message(message)
            text = (f"{message.strip()}\nRun `{prog} --help` for every option." if debug or not first.reason
                    else f"{_oneline(first.key, first.reason)} Run `{prog} --help` for every option "
                    f"(full parser message: {DEBUG_ENV}=1).")
        else:
            what, fix = explained
            text = f"{what}{'' if what.endswith('?') else '.'} {fix}" + (
                "" if debug else f" (full parser message: {DEBUG_ENV}=1)")
            if debug:
                text += f"\nThe parser's message:\n{message.rstrip()}"
        sys.stderr.write(f"{prog}: error: {text}\n")
        self.exit(2)


def _oneline(key: str, reason: str) -> str:
    reason = reason.rstrip(".")
    return f"--{key}: {reason}." if key and not reason.startswith(("--", key)) else f"{reason}."


# ---- config checks (before anything is instantiated or written) ---------------------------------
def _as_dict(value: Any) -> Any:
    if isinstance(value, Namespace):
        return value.as_dict()
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def check_trainer_config(trainer: Mapping[str, Any]) -> None:
    """Refuse trainer settings that Lightning or torch would refuse with a traceback."""
    devices = trainer.get("devices", "auto")
    bad = (isinstance(devices, int) and not isinstance(devices, bool) and (devices == 0 or devices < -1)) or (
        isinstance(devices, str) and devices.strip() in ("0", "", "[]")) or (
        isinstance(devices, (list, tuple)) and len(devices) == 0)
    check(not bad, "trainer.devices must name at least one device", devices,
          "Use --trainer.devices 1 (or N processes, or auto).")
    accelerator = trainer.get("accelerator", "auto")
    if isinstance(accelerator, str):
        acc = accelerator.lower()
        if acc in ("gpu", "cuda"):
            check(torch.cuda.is_available(), "this machine has no usable CUDA GPU for trainer.accelerator",
                  accelerator, "Use --trainer.accelerator cpu, or auto to use a GPU only where there is one.")
            if isinstance(devices, int) and devices > 0:
                n = torch.cuda.device_count()
                check(devices <= n, f"trainer.devices asks for more GPUs than the {n} visible", devices,
                      f"Use --trainer.devices {n} or fewer (or -1 for all).")
        elif acc == "mps":
            check(torch.backends.mps.is_available(), "this machine has no MPS device for trainer.accelerator",
                  accelerator, "Use --trainer.accelerator cpu or auto.")
        elif acc == "tpu":
            import importlib.util

            check(importlib.util.find_spec("torch_xla") is not None,
                  "trainer.accelerator tpu needs torch_xla, which is not installed", accelerator,
                  "Use --trainer.accelerator cpu or auto.")
    for key in ("max_epochs", "max_steps"):  # 0 would end the fit before its first step
        value = trainer.get(key)
        check(not (isinstance(value, int) and not isinstance(value, bool) and value == 0),
              f"trainer.{key} 0 would train nothing", value,
              f"Set --trainer.{key} to 1 or more ({key.split('_')[1]}), or -1 for no limit.")
    for key, low, meaning in (("max_epochs", -1, "-1 trains without an epoch limit"),
                              ("max_steps", -1, "-1 trains without a step limit"),
                              ("min_epochs", 0, "0 or more"), ("min_steps", 0, "0 or more")):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            check(value >= low, f"trainer.{key} must be >= {low}", value,
                  f"Set --trainer.{key} to a count of {key.split('_')[1]} ({meaning}).")
    for key in ("check_val_every_n_epoch", "log_every_n_steps", "accumulate_grad_batches"):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            check(value >= 1, f"trainer.{key} must be >= 1", value, f"Set --trainer.{key} to 1 or more.")


def check_seed(seed: Any) -> None:
    """``seed_everything`` must be a bool or an integer numpy accepts."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        check(0 <= seed <= 2**32 - 1, "seed_everything must lie in [0, 2**32 - 1]", seed,
              "Use a non-negative integer such as 0, or true for a random seed.")


def check_optimizer_config(model: Mapping[str, Any]) -> None:
    """Refuse a learning rate that is not positive (a zero one trains nothing), and other
    negative optimizer sizes, in the config."""
    args = (model.get("init_args") or {}) if isinstance(model, Mapping) else {}
    for key in ("optimizer", "lr_scheduler"):
        spec = args.get(key)
        if not isinstance(spec, Mapping):
            continue
        for name, value in (spec.get("init_args") or {}).items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and name in ("lr", "weight_decay", "momentum", "eps", "max_lr"):
                if name in ("lr", "max_lr"):
                    what = "the learning rate" if name == "lr" else f"{key} argument {name}"
                    check(value > 0, f"{what} must be > 0 (0 leaves the weights where they start)", value,
                          f"Set --model.{key}.init_args.{name} to a positive number, e.g. 0.001.")
                check(value >= 0, f"{key} argument {name} must be >= 0", value,
                      f"Set --model.{key}.init_args.{name} to a non-negative number, e.g. 0.001.")


def _members_of(args: Mapping[str, Any], seed: Any = None) -> tuple[list[int] | None, list[int]] | None:
    """The members ``(seeds, widths)`` that model arguments describe, resolved as the model
    resolves them (``None`` for a single model); ``seed`` is the run's seed for widths-only fits."""
    try:
        seeds, widths = parse_seeds(_plain(args.get("seeds"))), parse_widths(_plain(args.get("widths")))
    except ConfigError:
        return None  # refused with its own message when the model is built
    if seeds is None and widths is None:
        return None
    if seeds is None and seed is not None and not isinstance(seed, bool):
        seeds = [int(seed)]  # a widths-only fit's members take the run's seed
    return (seeds, widths or [int(args.get("width", 64))])  # seeds None: a random run seed, unknown


def check_checkpoint_matches(ckpt: Mapping[str, Any], model: Mapping[str, Any], ckpt_path: str,
                             seed: Any = None) -> None:
    """Refuse a checkpoint whose saved model hyperparameters differ from the model configured
    (members compared as the model resolves them; ``seed`` is the config's ``seed_everything``)."""
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if not hparams or not isinstance(model, Mapping):
        return
    diffs = []
    saved_class, class_path = hparams.get("_class_path"), model.get("class_path")
    if saved_class and class_path and saved_class != class_path:
        diffs.append(f"model class: checkpoint {saved_class}, config {class_path}")
    args = dict(model.get("init_args") or {})
    for key, saved in hparams.items():
        # linked data values and members' resolved lists are compared once the model is built
        if key.startswith("_") or key not in args or key in LATE_CHECKED:
            continue
        if _plain(saved) != _plain(_as_dict(args[key])):
            diffs.append(f"model.{key}: checkpoint {saved!r}, config {_plain(args[key])!r}")
    saved_members, members = _members_of(hparams), _members_of(args, seed)
    if members is not None and saved_members is not None and members[0] is None:
        members = (saved_members[0], members[1])  # only the widths can be compared
    if saved_members != members:  # Lightning would silently load the checkpoint's members instead
        diffs.append(f"members (seeds, widths): checkpoint {saved_members}, config {members}")
    check(not diffs, "--ckpt_path holds a different model than the one configured: " + "; ".join(diffs),
          ckpt_path, "Resume with the settings the checkpoint was trained with (for example -c "
          "<run>/config.yaml), or drop --ckpt_path to start a new fit with these settings.")


def check_checkpoint_callbacks(ckpt: Mapping[str, Any], callbacks: Any, ckpt_path: str) -> None:
    """Refuse resuming a checkpoint whose mask-holding study callback is not configured."""
    saved = [str(k) for k in (ckpt.get("callbacks") or {})]
    specs = callbacks if isinstance(callbacks, list) else ([callbacks] if callbacks else [])
    configured = {str(_as_dict(c).get("class_path", "")).rsplit(".", 1)[-1] for c in specs
                  if isinstance(_as_dict(c), Mapping)}
    configured |= {type(c).__name__ for c in specs if isinstance(c, Callback)}
    for name, fragment in MODEL_CHANGING_CALLBACKS.items():
        if any(k == name or k.startswith(name + "{") for k in saved):
            check(name in configured, f"--ckpt_path was written by a fit with {name}, which is not "
                  "configured now: the network it changed would not be restored (pruned weights would "
                  "come back, a widened network would not load)",
                  ckpt_path, f"Resume with the same callbacks (add -c callbacks/{fragment}.yaml, or -c "
                  "<run>/config.yaml).")


def resolve_last_checkpoint(root: str | Path | None) -> str:
    """``--ckpt_path last``: the run folder's ``last.ckpt``, or its newest intact checkpoint when
    ``last.ckpt`` is missing or damaged (said on the console)."""
    check(bool(root), "--ckpt_path last needs the run folder to resume", root,
          "Add --trainer.default_root_dir <run folder> (or -c <run>/config.yaml).")
    folder = RunFolder(str(root))
    found = folder.resume_checkpoint()
    check(found is not None, "--ckpt_path last found no intact checkpoint in the run folder", str(root),
          f"Check {folder.checkpoints}, or start the fit without --ckpt_path.")
    assert found is not None
    if found != folder.last_ckpt:
        print(f"overparam-lit: {folder.last_ckpt} is missing or damaged; resuming from {found}",
              file=sys.stderr)
    return str(found)


def check_run_folder(folder: RunFolder, ckpt_path: str | Path | None, overwrite: bool) -> bool:
    """May a new fit use ``folder``? Returns True when it must clear an earlier run first
    (``--overwrite``); raises :class:`ConfigError` when the folder holds a run that this fit
    neither resumes (a ``--ckpt_path`` inside the folder) nor overwrites."""
    if not folder.holds_run():
        return False
    resumes = bool(ckpt_path) and folder.owns(ckpt_path)
    if overwrite:
        check(not resumes, "--overwrite would delete the checkpoint this fit resumes from", str(ckpt_path),
              "Drop --overwrite to resume the run, or drop --ckpt_path to start over.")
        return True
    if resumes:
        return False
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in folder.existing_artifacts()[:6])
    last = folder.resume_checkpoint()
    resume = (f"resume it with --ckpt_path {last}, " if last is not None
              else "give its checkpoint with --ckpt_path, ")
    why = "--ckpt_path points outside this folder, so this would be a different fit; " if ckpt_path else ""
    raise ConfigError(
        f"the run folder already holds a run ({found}) (got {str(folder.root)!r}). {why}To continue that "
        f"run, {resume}to start over there pass --overwrite true (deletes that run's artifacts), or leave "
        "--trainer.default_root_dir unset for a fresh runs/<time>.")


# ---- callbacks the CLI adds -----------------------------------------------------------------------
class SaveRunConfig(SaveConfigCallback):
    """Saves the whole config as ``config.yaml`` in the run folder (atomically, and only once
    the fit was accepted). A fit that resumes the folder keeps the earlier config as
    ``config.yaml.<time>.bak``. ``overwrite`` is saved as false, so rerunning the saved config
    never clears a folder by surprise. Values the CLI links from the data module into the model
    are appended as comments (they are recomputed when the file is used again with ``-c``).
    """

    def __init__(self, *args: Any, keep_old: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_old = keep_old

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # every rank calls this: it broadcasts the folder
        if trainer.is_global_zero and log_dir is not None:
            config = self.config.clone()
            if "overwrite" in config:
                config["overwrite"] = False
            if "threads" in config:
                config["threads"] = None  # a setting of this machine: a rerun chooses again
            # the config was checked when it was parsed; dumping it again unchecked is fast
            text = self.parser.dump(config, skip_none=False, skip_check=True)
            linked = {k: getattr(pl_module, k, None) for k in ("input_shape", "num_classes", "task")}
            text += "# linked from the data module at run time:\n" + "".join(
                f"#   model.init_args.{k}: {list(v) if isinstance(v, tuple) else v}\n"
                for k, v in linked.items()
            )
            folder = RunFolder(log_dir)
            if self.config_filename == RunFolder.CONFIG:
                folder.write_config(text, keep_old=self.keep_old)
            else:
                from overparam_lit.utils import atomic_write_text

                atomic_write_text(text, folder.root / self.config_filename)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class DefineWandbAxes(Callback):
    """Gives level-wise, probe-wise and snapshot-wise series their own x axis in W&B dashboards:
    ``imp/*`` against ``imp/level``, ``hessian/*`` against ``hessian/step`` and ``regions/*``
    against ``regions/epoch``."""

    AXES = (("imp/level", "imp/*"), ("hessian/step", "hessian/*"), ("regions/epoch", "regions/*"))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                for axis, series in self.AXES:
                    run.define_metric(axis)
                    run.define_metric(series, step_metric=axis)


class EpochLines(ProgressBar):
    """Progress as one plain line per epoch (for logs that are not a terminal, where a TQDM bar
    redraws into thousands of lines): ``epoch 3/40  train/loss 0.512  ...  val/acc 0.801  1.2 s``."""

    KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._pending: int | None = None
        self._start = time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _line(self, trainer: Trainer, epoch: int) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        metrics = trainer.callback_metrics
        parts = [f"{k} {float(metrics[k]):.4g}" for k in self.KEYS if k in metrics]
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        seconds = time.perf_counter() - self._start
        print(f"epoch {epoch + 1}{total}  " + "  ".join(parts) + f"  {seconds:.1f} s", flush=True)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            self._line(trainer, self._pending)
        self._pending = None
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            self._line(trainer, self._pending)
        self._pending = None

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            metrics = trainer.callback_metrics
            parts = [f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()) if k.startswith("test/")]
            print("test  " + "  ".join(parts), flush=True)


# ---- the CLI -------------------------------------------------------------------------------------
class OverparamCLI(LightningCLI):
    """LightningCLI for overparam-lit.

    - ``data.input_shape``, ``data.num_classes`` and ``data.task`` flow into the model.
    - ``--model MLP --data MNIST1D`` short names work for every family, data module and study
      callback (``--trainer.callbacks.help HessianProbe``).
    - Each run gets a folder (``--trainer.default_root_dir``, default ``runs/<time>``, never an
      existing one) holding ``config.yaml``, ``metrics.csv``, ``checkpoints/`` and the callbacks'
      artifacts (:class:`~overparam_lit.runfolder.RunFolder`). A folder that holds a run takes a
      new fit only as a resume of that run (``--ckpt_path <folder>/checkpoints/last.ckpt``) or with
      ``--overwrite true``; a folder in use by another fit is refused.
    - ``fit`` ends with the test split (``--test_after_fit false`` skips it), a W&B summary and a
      printed summary of the run.
    - Loggers default to CSV plus W&B (see ``--wandb.*``); a logger given under
      ``trainer.logger`` replaces them.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", OverparamArgumentParser)
        self.lock: RunLock | None = None
        self.run_folder: RunFolder | None = None
        self.checkpoint: dict[str, Any] | None = None
        self._reserved: list[Path] = []
        self._set_env: dict[str, str | None] = {}
        self._accepted = False
        self.subcommand: str | None = None
        self.wandb_mode = "disabled"
        try:
            super().__init__(OverparamModule, ArrayDataModule, **kwargs)
        finally:
            self.release()

    # ---- parser ------------------------------------------------------------------------------
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.input_shape", "model.init_args.input_shape", compute_fn=list, apply_on="instantiate"
        )
        for key in ("num_classes", "task"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_class_arguments(WandbOptions, "wandb")
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="Start over in a run folder that holds an earlier run: its artifacts (config.yaml, "
                 "metrics.csv, checkpoints/, imp/, hessian/, regions/, wandb/, ...) are deleted first.")
        parser.add_argument(
            "--threads", type=int | None, default=None,
            help="CPU threads of torch and the BLAS pools. Default: the OVERPARAM_LIT_THREADS or "
                 "OMP_NUM_THREADS environment variable when set, else 1 on a machine with two cores or "
                 "fewer or when the other cores are busy (load average), else torch's default.")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="After fit, evaluate the test split (test/loss, test/acc in metrics.csv and W&B).")
        parser.add_argument(
            "--sweep", type=dict | None, default=None,
            help="The sweep block of a study config (configs/study_*.yaml), read by `overparam-lit sweep`; "
                 "fit ignores it and runs the config's base point.")

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The parser, named ``overparam-lit`` however the CLI was started."""
        kwargs.setdefault("prog", "overparam-lit")
        return super().init_parser(**kwargs)

    def _sub(self) -> Namespace:
        return self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check everything that can be checked on the config alone."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        cfg = self.config.get(subcommand, self.config) if subcommand else self.config
        trainer = _as_dict(cfg.get("trainer")) or {}
        check_seed(cfg.get("seed_everything"))
        check_trainer_config(trainer)
        model = _as_dict(cfg.get("model")) or {}
        check_optimizer_config(model)
        ckpt_path = cfg.get("ckpt_path")
        if subcommand and ckpt_path == "last":
            ckpt_path = cfg["ckpt_path"] = resolve_last_checkpoint(trainer.get("default_root_dir"))
        if subcommand and ckpt_path and str(ckpt_path) not in ("best", "hpc") \
                and not str(ckpt_path).startswith("registry"):
            self.checkpoint = read_checkpoint(ckpt_path)
            check_checkpoint_matches(self.checkpoint, model, str(ckpt_path), cfg.get("seed_everything"))
            if subcommand == "fit":
                check_checkpoint_callbacks(self.checkpoint, trainer.get("callbacks"), str(ckpt_path))
        if subcommand is None:
            return
        self.set_threads(subcommand, cfg.get("threads"))
        explicit = trainer.get("default_root_dir")
        if explicit:
            folder = RunFolder(explicit)
            folder.check_writable()
            if not self._launch_rank_zero():
                return
            resuming = bool(ckpt_path) and folder.owns(ckpt_path) and folder.holds_run()
            RunLock(folder.lock_file).check_free()  # taken (and checked again) once the fit is accepted
            if subcommand == "fit":
                check_run_folder(folder, ckpt_path, bool(cfg.get("overwrite")))  # again under the lock
                self.save_config_kwargs["keep_old"] = resuming
            elif folder.config_yaml.exists():
                self.save_config_kwargs["config_filename"] = f"config.{subcommand}.yaml"
        else:
            RunFolder("runs").check_writable()

    def set_threads(self, subcommand: str, flag: int | None) -> None:
        """Choose and apply the thread count (:mod:`overparam_lit.threads`) and say so in the first
        line printed; processes this one starts (DDP ranks) inherit the choice."""
        choice = choose_threads(available_cores(), load_average(), os.environ, flag, torch_default_threads())
        self._set_env.update({k: None for k in apply_threads(choice.threads) if k not in self._set_env})
        if os.environ.get(THREADS_ENV) != str(choice.threads):
            self._set(THREADS_ENV, str(choice.threads))
        if self._launch_rank_zero():  # torch's own count, read back
            print(f"overparam-lit {subcommand}: threads {torch.get_num_threads()} ({choice.reason})",
                  flush=True)

    # ---- the run folder -------------------------------------------------------------------------
    @staticmethod
    def _launch_rank_zero() -> bool:
        """False in processes another launcher started as a non-zero rank (DDP children of this
        CLI, torchrun or SLURM ranks): they trust rank zero's checks and lock."""
        for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
            value = os.environ.get(key)
            if value not in (None, "", "0"):
                return False
        return True

    def _set(self, key: str, value: str) -> None:
        self._set_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def _run_dir(self, config: dict[str, Any]) -> Path:
        if config.get("default_root_dir"):
            return Path(config["default_root_dir"])
        # DDP children re-run this command: they inherit the folder chosen by rank zero
        if os.environ.get(RUN_DIR_ENV):
            return Path(os.environ[RUN_DIR_ENV])
        base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        if not self._launch_rank_zero():
            return base
        root = base
        for n in range(1, 10000):  # reserve a fresh folder: mkdir is atomic, so no two fits share one
            try:
                created = [p for p in reversed(root.parents) if not p.exists()]
                root.parent.mkdir(parents=True, exist_ok=True)
                root.mkdir()
                self._reserved += [root, *reversed(created)]
                break
            except FileExistsError:
                root = base.with_name(f"{base.name}-{n}")
        self._set(RUN_DIR_ENV, str(root))
        return root

    def _accept_run_folder(self, subcommand: str) -> None:
        """Lock the run folder and decide whether this fit may use it (under the lock)."""
        if not self._launch_rank_zero() or self.run_folder is None:
            return
        sub = self._sub()
        folder = self.run_folder
        self.lock = RunLock(folder.lock_file).acquire()
        if self.lock.inherited:
            return
        if subcommand == "fit" and check_run_folder(folder, sub.get("ckpt_path"), bool(sub.get("overwrite"))):
            folder.clear()
        folder.remove_stale_temporaries()  # half-written files of a killed fit (we hold the lock)
        self._accepted = True

    def _check_instantiated(self) -> None:
        """Checks that need the model and trainer: the checkpoint's hyperparameters against the
        model as built (linked values included), and a trial of the optimizer and scheduler."""
        sub = self._sub()
        if self.checkpoint is not None and isinstance(self.model, LightningModule):
            saved = dict(self.checkpoint.get("hyper_parameters") or {})
            diffs = [f"model.{k}: checkpoint {v!r}, model {_plain(self.model.hparams[k])!r}"
                     for k, v in saved.items() if not k.startswith("_") and k in self.model.hparams
                     and _plain(v) != _plain(self.model.hparams[k])]
            check(not diffs, "--ckpt_path holds a different model than the one built: " + "; ".join(diffs),
                  str(sub.get("ckpt_path")), "Resume with the data and model settings the checkpoint was "
                  "trained with (for example -c <run>/config.yaml), or drop --ckpt_path.")
        factory = getattr(self.model, "optimizer_factory", None)
        if callable(factory):
            probe = torch.nn.Parameter(torch.zeros(1))
            try:
                optimizer = factory([probe])
                scheduler = getattr(self.model, "lr_scheduler_factory", None)
                if callable(scheduler):
                    scheduler(optimizer)
            except (ValueError, TypeError) as err:
                args = (_as_dict(sub.get("model")) or {}).get("init_args") or {}
                given = {k: _as_dict(args.get(k)) for k in ("optimizer", "lr_scheduler") if args.get(k)}
                raise ConfigError(f"the optimizer settings were refused: {err} (got {given!r}). Fix "
                                  "--model.init_args.optimizer / lr_scheduler.") from None

    def _before(self, subcommand: str) -> None:
        self._check_instantiated()
        self.checkpoint = None  # checked; Lightning loads it again itself
        self._accept_run_folder(subcommand)

    def before_fit(self) -> None:
        """Checks, then lock and accept the run folder (nothing was written before this); a study
        config's ``sweep:`` block is noted as ignored."""
        self._before("fit")
        stopping.clear()
        stopping.install()  # SIGTERM, SIGUSR1, SIGUSR2 stop the fit at a step (StopOnSignal)
        if self._sub().get("sweep") and self._launch_rank_zero():
            print(sweep_block_note(self._sub().get("config")), file=sys.stderr, flush=True)

    def before_validate(self) -> None:
        """As :meth:`before_fit`."""
        self._before("validate")

    def before_test(self) -> None:
        """As :meth:`before_fit`."""
        self._before("test")

    def before_predict(self) -> None:
        """As :meth:`before_fit`."""
        self._before("predict")

    # ---- trainer ---------------------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer with the run folder's loggers, checkpoints, progress output and plugins."""
        config_init = self.config_init.get(str(self.subcommand), self.config_init)
        config = {**(config_init.get("trainer") or {})}
        root = self._run_dir(config)
        self.run_folder = RunFolder(root)
        kwargs["default_root_dir"] = str(root)
        sub = self._sub()
        if config.get("logger") in (None, True):
            options = WandbOptions(**_as_dict(sub["wandb"]))
            self.wandb_mode = resolve_wandb_mode(options.mode)
            kwargs["logger"] = make_loggers(root, options, self.run_config(), job_type=self.subcommand)
        user = config.get("callbacks") or []
        user = list(user) if isinstance(user, list) else [user]
        has_ckpt = any(isinstance(c, ModelCheckpoint) for c in user)
        has_bar = any(isinstance(c, ProgressBar) for c in user)
        first: list[Callback] = [EpochBoundary(), StopOnSignal()]
        last: list[Callback] = [DefineWandbAxes(), MetricsCSVCheckpoint()]
        if config.get("enable_progress_bar", True) is not False and not has_bar:
            # redrawing the bar every step costs more than a small model's step; no bar in logs
            last.append(TQDMProgressBar(refresh_rate=10) if sys.stdout.isatty() else EpochLines())
        if config.get("enable_checkpointing", True) is not False and not has_ckpt:
            last.append(RunCheckpoint(self.run_folder.checkpoints))
        kwargs["callbacks"] = first + user + last
        plugins = config.get("plugins")
        plugins = [] if plugins is None else (list(plugins) if isinstance(plugins, list) else [plugins])
        if not any(isinstance(p, CheckpointIO) for p in plugins) and config.get("strategy", "auto") in (
                "auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "single_device"):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins or None
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            message = str(err).strip()
            given = {k: v for k, v in (_as_dict(sub.get("trainer")) or {}).items()
                     if isinstance(k, str) and re.search(rf"\b{re.escape(k)}\b", message)}
            given = given or {k: v for k, v in (_as_dict(sub.get("trainer")) or {}).items()
                              if k in _TRAINER_KEYS}
            raise ConfigError(f"the trainer settings were refused: {message} (got {given}). "
                              "Fix the --trainer.* option named above.") from None

    def run_config(self) -> dict[str, Any]:
        """The resolved config as flat dotted keys (the W&B run config). A members fit names its
        members as the model resolved them: ``model.seeds`` and ``model.widths`` (lists),
        ``model.members`` (their count), and, for several widths, ``model.width`` and
        ``model.num_params`` as per-width lists (the base width trains no member)."""
        sub = self._sub()
        flat = flatten_config(sub)
        for key in ("overwrite", "wandb.mode", "threads"):
            flat.pop(key, None)
        for key in [k for k in flat if k == "sweep" or k.startswith("sweep.")]:
            flat.pop(key)  # a study config's sweep block is no setting of this fit
        model = getattr(self, "model", None)
        for key in ("input_shape", "num_classes", "task"):
            if model is not None and key in getattr(model, "hparams", {}):
                flat[f"model.{key}"] = _plain(model.hparams[key])
        if model is not None and hasattr(model, "num_params"):
            flat["model.num_params"] = int(model.num_params)
        if model is not None and getattr(model, "members", None) is not None:
            rows = model.member_rows()
            sizes = {int(r["width"]): int(r["num_params"]) for r in rows}
            flat["model.seeds"] = list(dict.fromkeys(int(r["seed"]) for r in rows))
            flat["model.widths"] = list(sizes)
            flat["model.members"] = len(rows)
            if len(sizes) == 1:
                flat["model.width"], flat["model.num_params"] = next(iter(sizes.items()))
            else:
                flat["model.width"], flat["model.num_params"] = list(sizes), list(sizes.values())
        return flat

    # ---- after fit -------------------------------------------------------------------------------
    def _has_test_split(self) -> bool:
        dm, model = self.datamodule, self.model
        if not isinstance(model, LightningModule) or type(model).test_step is LightningModule.test_step:
            return False
        if dm is None:
            return False
        return type(dm).test_dataloader is not LightningDataModule.test_dataloader

    def after_fit(self) -> None:
        """Test split, W&B summary and a printed summary of the run."""
        trainer = self.trainer
        if self._sub().get("test_after_fit", True) and not trainer.interrupted and self._has_test_split():
            trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        self.finish_run()

    def finish_run(self) -> None:
        """W&B summary values (final and best val/test, final train error), end of the W&B run,
        and the end-of-fit summary on the console (rank zero)."""
        trainer = self.trainer
        if not trainer.is_global_zero or self.run_folder is None:
            return
        from overparam_lit.studies.results import run_summary

        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, RunCSVLogger)), None)
        summary: dict[str, float] = {}
        if csv_logger is not None:
            csv_logger.csv.flush(sync=True)
            summary = run_summary(self.run_folder.root)
        for logger in trainer.loggers:
            run = wandb_run_if_started(logger) if isinstance(logger, WandbLogger) else None
            if run is not None:
                run.summary.update(summary)
                run.finish()
        print_run_summary(self.run_folder, summary, getattr(self, "wandb_mode", "disabled") == "offline",
                          growth=getattr(self.model, "loss_growth", None))

    # ---- cleanup ---------------------------------------------------------------------------------
    def release(self) -> None:
        """Release the lock, forget the inherited environment, and remove a reserved default
        folder that stayed empty because the launch was refused."""
        if self.lock is not None:
            self.lock.release()
        stopping.uninstall()
        for key, old in self._set_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._set_env = {}
        if not self._accepted and self.subcommand is not None:
            for path in self._reserved:
                try:
                    path.rmdir()
                except OSError:
                    break
        self._reserved = []


def sweep_block_note(configs: Any) -> str:
    """The note of a fit whose config holds a study's ``sweep:`` block (which only ``sweep`` reads)."""
    import yaml

    study = "STUDY.yaml"
    for cfg in configs or []:
        path = str(getattr(cfg, "relative", None) or cfg)
        try:
            text = yaml.safe_load(Path(getattr(cfg, "absolute", None) or path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(text, dict) and text.get("sweep"):
            study = path
    return (f"overparam-lit fit: note: the sweep: block of {study} was ignored; this fit runs the config's "
            f"base point only. `overparam-lit sweep -c {study} --out DIR` runs the study.")


_TRAINER_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "max_epochs", "max_steps",
                 "plugins", "fast_dev_run")


def print_run_summary(folder: RunFolder, summary: Mapping[str, float], offline: bool,
                      growth: Mapping[str, float] | None = None) -> None:
    """Print where a finished run lies, its final metrics and how to look at them; ``growth``
    (the module's ``loss_growth``) adds a warning that the training loss grew over a million-fold."""
    keys = [("train", "final/train_acc", "final/train_loss"), ("val", "final/val_acc", "final/val_loss"),
            ("test", "final/test_acc", "final/test_loss")]
    parts = []
    for split, acc, loss in keys:
        if acc in summary:
            parts.append(f"{split}/acc {summary[acc]:.4f}")
        elif loss in summary:
            parts.append(f"{split}/loss {summary[loss]:.4g}")
    root = folder.root
    lines = [f"Run folder: {root}"]
    if parts:
        lines.append("Final: " + "  ".join(parts))
    if "best/val_acc" in summary:
        epoch = int(summary.get("best/val_epoch", -1)) + 1  # counted from 1, as the epoch lines
        lines.append(f"Best val/acc {summary['best/val_acc']:.4f} (epoch {epoch})" if epoch > 0
                     else f"Best val/acc {summary['best/val_acc']:.4f}")
    lines += width_table(folder)
    if growth:
        member = f" of member {int(growth['member'])}" if growth.get("member") else ""
        lines.append(
            f"Warning: the training loss{member} grew {growth['ratio']:.3g}-fold over its first step's "
            f"value ({growth['first']:.4g} -> {growth['loss']:.4g} in epoch {int(growth['epoch']) + 1}): "
            "training diverged without reaching NaN. Lower the learning rate, or add warm-up or "
            "gradient clipping.")
    lines.append(f"Metrics: {folder.metrics_csv} (one row per logging step; "
                 "overparam_lit.studies.read_metrics_csv reads it)")
    runs = folder.wandb_offline_runs()
    if offline and runs:
        lines.append(f"W&B (offline): wandb sync {runs[-1]}")
    elif folder.wandb.is_dir():
        lines.append("W&B: the run is on your W&B dashboard (project overparam-lit by default)")
    if folder.last_ckpt.is_file():
        lines.append(f"Continue: overparam-lit fit -c {folder.config_yaml} --ckpt_path {folder.last_ckpt} "
                     "--trainer.max_epochs <more>")
    print("\n".join(lines), flush=True)


def width_table(folder: RunFolder) -> list[str]:
    """Lines of the end-of-fit table of a members fit: per width, its seeds and the means over
    them of the final val/test accuracy and loss, and its parameter count; then where
    ``members.csv`` is. Empty for a single model."""
    from overparam_lit.studies.results import member_finals

    if not folder.members_csv.is_file():
        return []
    rows = member_finals(folder.root)
    if not rows or any(r.get("width") in (None, "") for r in rows):  # another table of that name
        return []
    keys = [k for k in ("val/acc", "val/loss", "test/acc", "test/loss") if any(k in r for r in rows)]
    head = ["width", "seeds", "num_params", *keys]
    table = [head]
    for width in sorted({int(r["width"]) for r in rows}):
        mine = [r for r in rows if int(r["width"]) == width]
        cells = [str(width), str(len(mine)), str(mine[0].get("num_params", ""))]
        for key in keys:
            values = [float(r[key]) for r in mine if r.get(key) is not None]
            cells.append(f"{sum(values) / len(values):.4f}" if values else "")
        table.append(cells)
    sizes = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["Members by width (final values, means over the seeds):"]
    lines += ["  " + "  ".join(c.rjust(n) for c, n in zip(row, sizes, strict=True)) for row in table]
    lines.append(f"Members: {folder.members_csv} (one row per member and epoch)")
    return lines


# ---- entry point --------------------------------------------------------------------------------
def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The :class:`ConfigError` behind ``err`` (jsonargparse and Lightning wrap exceptions)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def resolve_fragment(path: str) -> str:
    """``path`` as given when it exists, else the packaged fragment of the same relative name
    (``callbacks/imp.yaml``, ``configs/quickstart.yaml``) when the package ships one."""
    if not path or Path(path).exists() or Path(path).is_absolute():
        return path
    packaged = FRAGMENTS / path
    return str(packaged) if packaged.is_file() else path


def resolve_config_args(argv: list[str]) -> list[str]:
    """Replace the values of ``-c``/``--config`` that do not exist by their packaged fragments."""
    out: list[str] = []
    take = False
    for arg in argv:
        if take:
            out.append(resolve_fragment(arg))
            take = False
        elif arg in ("-c", "--config"):
            out.append(arg)
            take = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_fragment(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_console() -> None:
    """Drop console noise that says nothing about the run: Lightning's advertisement tips, the
    ``log_every_n_steps`` warning (the modules log per epoch), a deprecation warning Lightning
    raises inside torch's pytree, and its hint to prepend ``srun`` that every fit outside SLURM
    prints on a machine where SLURM is installed (a login node)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in log.filters):
        log.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


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


def stop_message(stop: BaseException) -> str:
    """What a fit stopped by a signal prints: where it stopped, what it resumes from, and how."""
    signum = getattr(stop, "signum", int(signal.SIGTERM))
    epoch, step = getattr(stop, "stopped_at", (None, None))
    where = f" at step {step} (epoch {epoch})" if step is not None else ""
    head = (f"overparam-lit fit: stopped on {stopping.signal_name(signum)}{where}; exit code "
            f"{stopping.REQUEUE_EXIT_CODE} (run again to continue).")
    root = getattr(stop, "run_folder", None)
    if root is None:
        return head
    folder = RunFolder(root)
    ckpt = folder.newest_intact_checkpoint()
    if ckpt is None:
        return (f"{head} No checkpoint was written yet (none is made before the first epoch ends), "
                f"so the fit starts over: overparam-lit fit -c {folder.config_yaml} --overwrite true")
    return (f"{head} The run folder resumes from {ckpt} (the steps after it run again): "
            f"overparam-lit fit -c {folder.config_yaml} --ckpt_path {ckpt}")


def main(args: list[str] | None = None) -> int | None:
    """Console entry point: run a registered command or the CLI, printing bad-input errors as
    one paragraph (exit code 2). A registered command's non-zero exit code is raised as
    ``SystemExit``, so ``python -m overparam_lit`` passes it on as well.

    The working folder is importable, so ``--model my_study.MyNet`` finds ``./my_study.py``;
    ``-c callbacks/imp.yaml`` falls back to the packaged fragment when the path does not exist.
    """
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
        config_error = find_config_error(err)
        if config_error is None:
            raise
        print(f"overparam-lit: error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from None
    return None


if __name__ == "__main__":
    sys.exit(main())

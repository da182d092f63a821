"""One-line explanations of jsonargparse error messages: the message is read once
(:func:`read_parser_message`), then :func:`explain_parser_error` names the cause, a did-you-mean
where a near name exists, and the command line that fixes it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overparam_lit.cli.config_files import FRAGMENTS, resolve_fragment

_ARGV: list[str] = []

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

"""Grid values and names: parse ``KEY=v1,v2`` arguments, write values as the fit CLI reads them,
name fit folders.

A grid maps CLI keys of ``overparam-lit fit`` (``model.init_args.width``, ``seed_everything``,
``data.init_args.label_noise``, ...) to lists of values. Values are plain Python objects (as YAML
reads them); :func:`cli_text` writes one the way it would be typed after ``--KEY``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from overparam_lit.utils import check, tuples_to_lists

DONE_FILE = "done.json"
"""Completion marker of a fit of a sweep (``RunFolder.done_json``), written after it exits with 0."""

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_+][A-Za-z0-9_+]*)*$")
_RANGE = re.compile(r"^\s*range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)\s*$")


def parse_value(text: str) -> Any:
    """``"8"`` -> 8, ``"0.15"`` -> 0.15, ``"true"`` -> True, ``"null"`` -> None, ``"[1, 2]"`` -> [1, 2],
    else the string itself."""
    if not isinstance(text, str):
        return text
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", ""):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.strip()[:1] == "[" or (text.strip()[:1] == "{" and ": " in text):  # not "{main.imp_level:8}"
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return text


def cli_text(value: Any) -> str:
    """A value as typed after ``--KEY`` on the fit command line (``None`` -> ``null``, lists and
    mappings in YAML flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(tuples_to_lists(value), default_flow_style=True, width=10_000).strip()
    return str(value)


def check_key(key: str, source: str) -> str:
    """``key`` without a leading ``--``, or a :class:`ConfigError` when it is no dotted CLI key."""
    key = str(key).strip()
    if key.startswith("--"):
        key = key[2:]
    check(bool(_KEY.match(key)), f"grid key {key!r} from {source} is not a dotted CLI key", key,
          "Write keys as the fit CLI spells them, e.g. model.init_args.width or seed_everything.")
    return key


def expand_values(values: Any, key: str, source: str) -> list[Any]:
    """The values of one grid axis: a list, one scalar, or ``range(a, b[, step])``."""
    if isinstance(values, str) and _RANGE.match(values):
        a, b, step = (int(g) if g is not None else None for g in _RANGE.match(values).groups())
        out = list(range(a) if b is None else range(a, b, step or 1))
    else:
        out = list(values) if isinstance(values, list) else [values]
    check(bool(out), f"grid key {key!r} in {source} has no values", values,
          "Give a non-empty list, e.g. [2, 4, 8], or range(0, 10).")
    return out


def parse_grid_arg(text: str) -> tuple[str, list[Any]]:
    """Parse ``KEY=v1,v2,...`` (or ``KEY=range(0, 5)``) into ``(KEY, [values])``.

    Raises:
        ConfigError: no ``=``, an empty key, no values or an empty value (``2,,4``).
    """
    check("=" in text, "a --grid argument has no '='", text,
          "Write --grid KEY=v1,v2,..., e.g. --grid model.init_args.width=2,4,8.")
    key, _, rest = text.partition("=")
    key = check_key(key, repr(text))
    if _RANGE.match(rest):
        return key, expand_values(rest, key, repr(text))
    values = [v.strip() for v in rest.split(",")]
    check(bool(rest.strip()) and all(values), f"grid key {key!r} has an empty value", text,
          "Give one or more comma-separated values, e.g. --grid seed_everything=0,1,2.")
    return key, [parse_value(v) for v in values]


def parse_set_arg(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` (a fixed fit argument) into ``(KEY, value)``."""
    check("=" in text and bool(text.partition("=")[0].strip()), "a --set argument is not KEY=VALUE", text,
          "Write e.g. --set trainer.max_epochs=10.")
    key, _, value = text.partition("=")
    return check_key(key, repr(text)), parse_value(value.strip())


def short_keys(keys: list[str]) -> dict[str, str]:
    """Short names of CLI keys for folder names: the last part (``width``), or the whole key
    without ``init_args`` where two last parts coincide."""
    short = {k: k.split(".")[-1] for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: k.replace(".init_args.", ".").replace(".", "_") for k in keys}
    return short


def name_part(value: Any) -> str:
    """A value as it appears in a folder name (only ``[A-Za-z0-9.+-_]``)."""
    return re.sub(r"[^A-Za-z0-9.+-]", "_", cli_text(value)).strip("_") or "_"


def point_name(values: dict[str, Any]) -> str:
    """Folder name of a set of grid values, e.g. ``width-8_label_noise-0.15``."""
    if not values:
        return "point"
    short = short_keys(list(values))
    return "_".join(f"{short[k]}-{name_part(v)}" for k, v in values.items())


def list_name(label: str, values: list[int]) -> str:
    """``seeds-0to49`` for a run of consecutive integers, else ``widths-4.8.16``."""
    vals = [int(v) for v in values]
    if len(vals) > 2 and vals == list(range(vals[0], vals[0] + len(vals))):
        return f"{label}-{vals[0]}to{vals[-1]}"
    return f"{label}-" + ".".join(str(v) for v in vals)

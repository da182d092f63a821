"""Sweep grids: ``KEY=v1,v2`` arguments, YAML grid files, point names and fit commands.

A grid maps CLI keys of ``overparam-lit fit`` (``model.init_args.width``, ``seed_everything``,
``data.init_args.label_noise``, ...) to lists of values; the points are their Cartesian product.
Values stay the strings the user typed, so each point's command is exactly what one would type.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from overparam_lit.utils import ConfigError, check

DONE_FILE = "done.json"
"""Completion marker of a sweep point, written after ``overparam-lit fit`` exits with 0."""

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_+][A-Za-z0-9_+]*)*$")


@dataclass(frozen=True)
class Point:
    """One grid point: its folder name and the CLI values (as typed) of every grid key."""

    name: str
    values: dict[str, str] = field(default_factory=dict)

    def parsed(self) -> dict[str, Any]:
        """The values as numbers / booleans where they parse as such (for tables and plots)."""
        return {k: parse_value(v) for k, v in self.values.items()}


def parse_value(text: str) -> Any:
    """``"8"`` -> 8, ``"0.15"`` -> 0.15, ``"true"`` -> True, ``"null"`` -> None, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _check_key(key: str, source: str) -> str:
    key = key.strip()
    if key.startswith("--"):
        key = key[2:]
    check(bool(_KEY.match(key)), f"grid key {key!r} from {source} is not a dotted CLI key", source,
          "Write keys as the fit CLI spells them, e.g. model.init_args.width=2,4,8 or seed_everything=0,1.")
    return key


def parse_grid_arg(text: str) -> tuple[str, list[str]]:
    """Parse ``KEY=v1,v2,...`` into ``(KEY, [v1, v2, ...])``; refuse malformed input.

    Raises:
        ConfigError: no ``=``, an empty key, no values or an empty value (``2,,4``).
    """
    check("=" in text, "a --grid argument has no '='", text,
          "Write --grid KEY=v1,v2,..., e.g. --grid model.init_args.width=2,4,8.")
    key, _, rest = text.partition("=")
    key = _check_key(key, repr(text))
    values = [v.strip() for v in rest.split(",")]
    check(bool(rest.strip()) and all(values), f"grid key {key!r} has an empty value", text,
          "Give one or more comma-separated values, e.g. --grid seed_everything=0,1,2.")
    return key, values


def load_grid_file(path: str | Path) -> dict[str, list[str]]:
    """Read a YAML grid file: a mapping ``KEY: [values]`` (a scalar is a one-value list).

    A top-level ``grid:`` mapping is accepted too, so a file can carry comments and other keys.
    """
    path = Path(path)
    check(path.is_file(), "grid file not found", str(path), "Give the path of a YAML file of KEY: [values].")
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("grid"), dict):
        data = data["grid"]
    check(isinstance(data, dict) and bool(data), "grid file is not a non-empty mapping of KEY: [values]",
          str(path), "Write e.g. 'model.init_args.width: [2, 4, 8]' on one line per key.")
    grid: dict[str, list[str]] = {}
    for key, values in data.items():
        key = _check_key(str(key), str(path))
        values = values if isinstance(values, list) else [values]
        check(bool(values) and all(v is not None and str(v).strip() for v in values),
              f"grid key {key!r} in {path} has no values or an empty value", values,
              "Give a non-empty list, e.g. [2, 4, 8].")
        grid[key] = [_yaml_text(v) for v in values]
    return grid


def _yaml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def merge_grids(*grids: dict[str, list[str]]) -> dict[str, list[str]]:
    """Join grids, refusing a key given twice."""
    out: dict[str, list[str]] = {}
    for grid in grids:
        for key, values in grid.items():
            check(key not in out, "a grid key is given twice", key,
                  "Give each key once, with all its values.")
            out[key] = list(values)
    return out


def _short_keys(keys: list[str]) -> dict[str, str]:
    short = {k: k.split(".")[-1] for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: k.replace(".init_args.", ".").replace(".", "_") for k in keys}
    return short


def point_name(values: dict[str, str]) -> str:
    """Folder name of a point, e.g. ``width-8_seed_everything-0`` (stable when the grid grows)."""
    if not values:
        return "point"
    short = _short_keys(list(values))
    parts = [f"{short[k]}-{re.sub(r'[^A-Za-z0-9.+-]', '_', v)}" for k, v in values.items()]
    return "_".join(parts)


def expand_grid(grid: dict[str, list[str]]) -> list[Point]:
    """All points of the grid (Cartesian product, the first key varying slowest)."""
    keys = list(grid)
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        points.append(Point(point_name(values), values))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"grid values repeat, giving the same point twice (got {dup[:3]!r}). "
                          "Remove duplicate values from --grid.")
    return points


def fit_command(configs: list[str], point: Point, root: Path, group: str | None,
                extra: list[str] | None = None, python: str | None = None) -> list[str]:
    """The ``overparam-lit fit`` command of one point (``python -m overparam_lit fit ...``)."""
    cmd = [python or sys.executable, "-m", "overparam_lit", "fit"]
    for cfg in configs:
        cmd += ["-c", str(cfg)]
    cmd += list(extra or [])
    for key, value in point.values.items():
        cmd += [f"--{key}", value]
    cmd += ["--trainer.default_root_dir", str(root)]
    if group:
        cmd += ["--wandb.group", group]
    return cmd


def check_configs(configs: list[str]) -> None:
    """Refuse missing config files before anything runs."""
    check(bool(configs), "no config file given", configs, "Give one or more with -c configs/X.yaml.")
    for cfg in configs:
        check(Path(cfg).is_file(), "config file not found", str(cfg),
              "Check the path (relative to the folder the sweep runs from).")

"""The ``sweep:`` block of a study config, parsed and checked into a :class:`StudySpec` (its stages,
grids, packing and fixed arguments); the format is described in :mod:`overparam_lit.studies.spec`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from overparam_lit.studies.grid import check_key, cli_text, expand_values
from overparam_lit.utils import ConfigError, check

SWEEP_KEY = "sweep"
"""Top-level key of the sweep block in a study config."""
PACK_MODES = ("seeds", "widths", "all", "none")
SEED_KEY = "seed_everything"
WIDTH_KEYS = ("model.init_args.width", "model.width")
MAIN = "main"
BLOCK_KEYS = ("name", "figure", "grid", "pack", "width_groups", "set", "stages", "workers")
STAGE_KEYS = ("name", "grid", "drop", "pack", "width_groups", "set")


@dataclass(frozen=True)
class Axis:
    """One grid axis: one CLI key, or several keys whose values vary together."""

    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]


@dataclass
class StageSpec:
    """One stage of a study: its grid, packing and fixed arguments."""

    name: str
    grid: list[Axis]
    pack: str = "none"
    width_groups: list[list[int]] | None = None
    set: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Every grid key, in order."""
        return [k for a in self.grid for k in a.keys]


@dataclass
class StudySpec:
    """A parsed ``sweep:`` block (see :mod:`overparam_lit.studies.spec`)."""

    stages: list[StageSpec]
    name: str | None = None
    figure: str | None = None
    workers: int | None = None
    source: str = ""

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage {name!r} in the study (got {[s.name for s in self.stages]!r}). "
                          "Use one of the stage names.")


def _axes(grid: Any, source: str) -> list[Axis]:
    check(isinstance(grid, dict), f"the grid in {source} is not a mapping of CLI keys to values", grid,
          "Write e.g. grid: {model.init_args.width: [8, 16], seed_everything: range(3)}.")
    axes = []
    seen: set[str] = set()
    for raw_key, raw_values in grid.items():
        keys = tuple(check_key(k, source) for k in str(raw_key).split(","))
        for k in keys:
            check(k not in seen, f"grid key {k!r} appears twice in {source}", k, "Give each key once.")
            seen.add(k)
        values = expand_values(raw_values, ",".join(keys), source)
        if len(keys) == 1:
            rows = tuple((v,) for v in values)
        else:
            check(all(isinstance(v, list) and len(v) == len(keys) for v in values),
                  f"grid keys {', '.join(keys)} in {source} vary together, so each value must be a list "
                  f"of {len(keys)} entries", values, "Write e.g. - [perturb_rest, 0.1] for each value.")
            rows = tuple(tuple(v) for v in values)
        check(len(set(map(cli_text, rows))) == len(rows), f"grid key {raw_key!r} in {source} repeats a value",
              values, "Give each value once.")
        axes.append(Axis(keys, rows))
    return axes


def _set(values: Any, source: str) -> dict[str, Any]:
    if values is None:
        return {}
    check(isinstance(values, dict), f"'set' in {source} is not a mapping of CLI keys to values", values,
          "Write e.g. set: {trainer.max_epochs: 10}.")
    return {check_key(k, source): v for k, v in values.items()}


def _pack(value: Any, source: str) -> str:
    check(value in PACK_MODES, f"unknown pack mode in {source}", value, f"Use one of {PACK_MODES}.")
    return str(value)


def parse_width_groups(value: Any, source: str) -> list[list[int]] | None:
    """A width_groups value: a list of non-empty lists of distinct widths (``None`` stays ``None``)."""
    if value is None:
        return None
    ok = isinstance(value, list) and value and all(
        isinstance(g, list) and g and all(isinstance(w, int) and not isinstance(w, bool) for w in g)
        for g in value)
    check(bool(ok), f"width_groups in {source} is not a list of lists of widths", value,
          "Write e.g. width_groups: [[4, 8, 16], [32, 64], [128]].")
    flat = [w for g in value for w in g]
    check(len(flat) == len(set(flat)), f"width_groups in {source} lists a width twice", value,
          "Put each width in one group.")
    return [list(g) for g in value]


def parse_sweep_block(block: Any, source: str = "the sweep block") -> StudySpec:
    """Parse a ``sweep:`` block (a mapping) into a :class:`StudySpec`; bad input is a
    :class:`ConfigError` naming the key."""
    check(isinstance(block, dict), f"the sweep block of {source} is not a mapping", block,
          "Write sweep: {grid: {...}, pack: seeds}.")
    unknown = sorted(set(block) - set(BLOCK_KEYS))
    check(not unknown, f"unknown keys in the sweep block of {source}", unknown, f"Use only {BLOCK_KEYS}.")
    check("grid" in block, f"the sweep block of {source} has no grid", sorted(block),
          "Add grid: {KEY: [values]}, e.g. grid: {seed_everything: range(3)}.")
    main = StageSpec(MAIN, _axes(block["grid"], source), _pack(block.get("pack", "none"), source),
                     parse_width_groups(block.get("width_groups"), source), _set(block.get("set"), source))
    stages = [main]
    raw_stages = block.get("stages") or []
    check(isinstance(raw_stages, list), f"'stages' in {source} is not a list", raw_stages,
          "Write stages: [{name: controls, grid: {...}, set: {...}}].")
    for i, raw in enumerate(raw_stages):
        where = f"stage {i + 1} of {source}"
        check(isinstance(raw, dict) and isinstance(raw.get("name"), str) and bool(raw.get("name")),
              f"{where} has no name", raw, "Give every stage a name, e.g. name: controls.")
        unknown = sorted(set(raw) - set(STAGE_KEYS))
        check(not unknown, f"unknown keys in {where}", unknown, f"Use only {STAGE_KEYS}.")
        name = raw["name"]
        check(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name) is not None and name not in ("sweep",),
              f"{where} has a bad name", name, "Use a word such as 'controls' (not 'sweep').")
        check(name not in [s.name for s in stages], f"two stages are called {name!r} in {source}", name,
              "Give every stage its own name.")
        drop = raw.get("drop") or []
        check(isinstance(drop, list) and all(d in main.keys for d in drop), f"'drop' of {where} names keys "
              "that are not in the main grid", drop, f"Drop some of {main.keys}.")
        own = _axes(raw.get("grid") or {}, where)
        own_keys = {k for a in own for k in a.keys}
        inherited = [a for a in main.grid if not (set(a.keys) & (own_keys | set(drop)))]
        stages.append(StageSpec(name, inherited + own, _pack(raw.get("pack", main.pack), where),
                                parse_width_groups(raw.get("width_groups"), where) if "width_groups" in raw
                                else main.width_groups, _set(raw.get("set"), where)))
    workers = block.get("workers")
    check(workers is None or (isinstance(workers, int) and workers >= 1), f"workers in {source} must be >= 1",
          workers, "Set workers to e.g. 2 or leave it out.")
    figure = block.get("figure")
    check(figure is None or isinstance(figure, str), f"figure in {source} must be a figure name", figure,
          "Use e.g. figure: double-descent.")
    name = block.get("name")
    check(name is None or (isinstance(name, str) and bool(re.fullmatch(r"[\w.-]+", name))),
          f"name in {source} must be one word", name, "Use e.g. name: dd.")
    return StudySpec(stages, name, figure, workers, source)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping (empty when it is empty); a :class:`ConfigError` when it is
    missing or not YAML."""
    path = Path(path)
    check(path.is_file(), "config file not found", str(path),
          "Check the path (relative to the folder the sweep runs from).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"the config file is not valid YAML (got {str(path)!r}: "
                          f"{str(err).splitlines()[0]}). Fix the file.") from None
    check(isinstance(data, dict), "the config file is not a mapping", str(path), "Fix the file.")
    return data


def read_study(configs: list[str | Path]) -> StudySpec | None:
    """The sweep block of the config files (exactly one may hold one), or ``None`` when none does."""
    found = [(str(c), read_yaml(c)[SWEEP_KEY]) for c in configs if SWEEP_KEY in read_yaml(c)]
    check(len(found) <= 1, "more than one config file holds a sweep block", [f for f, _ in found],
          "Keep the sweep block in one file (the study config).")
    if not found:
        return None
    return parse_sweep_block(found[0][1], found[0][0])

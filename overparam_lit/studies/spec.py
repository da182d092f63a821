"""Study configs: the ``sweep:`` block of a fit config, and the plan of fits it expands to.

A study config is an ordinary ``overparam-lit fit`` config plus a top-level ``sweep:`` block
(``overparam-lit fit`` ignores the block and runs the base point)::

    sweep:
      name: dd                       # optional: sweep and W&B group name (default: the --out folder)
      figure: double-descent         # optional: the figure `overparam-lit plot DIR` draws
      grid:                          # CLI keys of `overparam-lit fit` -> values (a list, a scalar,
        model.init_args.width: [8, 16, 32, 64]   # or range(a, b))
        seed_everything: range(3)
        trainer.callbacks.mode, trainer.callbacks.sigma:   # keys joined by ", " vary together
          - [ticket, null]
          - [perturb_rest, 0.1]
      pack: seeds                    # seeds | widths | all | none: grid axes folded into member fits
      width_groups: [[8, 16, 32], [64]]   # optional: widths that share a fit when widths are packed
      set: {trainer.callbacks.bank_path: "{sweep}/bank.pt"}   # optional: fixed arguments of every fit
      stages:                        # optional: later stages, run after the fits they refer to
        - name: controls
          grid: {trainer.callbacks.ticket: ["{main.imp_level:8}"]}   # merged over the main grid
          drop: []                   # main grid keys this stage leaves out
          set: {trainer.callbacks: [{class_path: overparam_lit.callbacks.ticket.TicketStart}]}

**Packing.** ``seed_everything: [0, 1, 2]`` with ``pack: seeds`` becomes one fit with
``--model.seeds [0, 1, 2]`` (member ``s`` trains exactly as the single run ``--seed_everything s``);
``model.init_args.width`` with ``pack: widths`` becomes ``--model.widths [...]`` (one fit per entry
of ``width_groups``, default all widths in one fit); ``all`` packs both, ``none`` neither.

**Stages.** The first stage, ``main``, is the block's own ``grid``/``pack``/``set``. Every entry of
``stages`` starts from the main grid (minus ``drop``), adds or overrides keys with its own
``grid``, inherits ``pack`` and ``width_groups`` unless it gives them, and has its own ``set``
(the main ``set`` is not inherited). Values may refer to run folders:

- ``{sweep}``: the sweep folder;
- ``{STAGE}``: the run folder of the fit of an earlier stage ``STAGE`` with the same values of
  the keys both stages share (and the same packed seeds and widths);
- ``{STAGE.NAME}`` / ``{STAGE.NAME:ARG}``: a property or one-argument method of that fit's
  :class:`~overparam_lit.runfolder.RunFolder` (``{main.imp_level:8}`` is its ``imp/level_08``).

A fit of a later stage starts once the fits it refers to have finished.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.grid import (
    check_key,
    cli_text,
    expand_values,
    list_name,
    point_name,
)
from overparam_lit.utils import ConfigError, check

SWEEP_KEY = "sweep"
"""Top-level key of the sweep block in a study config."""
PACK_MODES = ("seeds", "widths", "all", "none")
SEED_KEY = "seed_everything"
WIDTH_KEYS = ("model.init_args.width", "model.width")
MAIN = "main"
BLOCK_KEYS = ("name", "figure", "grid", "pack", "width_groups", "set", "stages", "workers")
STAGE_KEYS = ("name", "grid", "drop", "pack", "width_groups", "set")
_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)(?:\.([A-Za-z_][A-Za-z0-9_]*)(?::([^{}:]+))?)?\}")


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
    """A parsed ``sweep:`` block (see the module docstring)."""

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


# ---- the plan ------------------------------------------------------------------------------------
@dataclass
class Fit:
    """One ``overparam-lit fit`` of a sweep.

    Attributes:
        name: folder name (``OUT/points/<name>``), unique in the sweep.
        stage: the stage it belongs to.
        values: grid values of the axes that were not packed (CLI key -> value, references
            unresolved).
        seeds: the packed seeds (members), or ``None``.
        widths: the packed widths (members), or ``None``.
        args: the fit's own arguments after the configs (references resolved), without the run
            folder and resume arguments.
        deps: names of the fits this one refers to (they must finish first).
        folder: its run folder.
    """

    name: str
    stage: str
    values: dict[str, Any]
    seeds: list[int] | None
    widths: list[int] | None
    args: list[str]
    deps: list[str]
    folder: Path

    @property
    def num_members(self) -> int:
        """Members of the fit (1 for a single model)."""
        return len(self.seeds or [0]) * len(self.widths or [0])

    def cost(self) -> float:
        """A rough relative cost for scheduling the largest fits first: members times the square
        of the largest width, plus a fit's fixed start-up and per-step overhead (measured on a
        2-core CPU with MNIST-1D MLPs: about a width-360 member's arithmetic)."""
        width = max(self.widths) if self.widths else self.values.get("model.init_args.width",
                                                                     self.values.get("model.width", 1))
        width = width if isinstance(width, (int, float)) else 1
        return float(self.num_members) * float(width) ** 2 + 2.0**17

    def record(self) -> dict[str, Any]:
        """The fit as plain JSON."""
        return {"name": self.name, "stage": self.stage, "values": self.values, "seeds": self.seeds,
                "widths": self.widths, "args": self.args, "deps": self.deps, "folder": str(self.folder)}


@dataclass
class Plan:
    """Every fit of a sweep, in stage order."""

    configs: list[str]
    out: Path
    name: str
    fits: list[Fit]
    spec: StudySpec

    def fit(self, name: str) -> Fit:
        """The fit called ``name``."""
        for f in self.fits:
            if f.name == name:
                return f
        raise ConfigError(f"no fit {name!r} in this sweep (got {len(self.fits)} fits, e.g. "
                          f"{[f.name for f in self.fits[:3]]!r}). Use --dry-run to list them.")

    def command(self, fit: Fit, python: str | None = None) -> list[str]:
        """``python -m overparam_lit fit -c ... ARGS --trainer.default_root_dir DIR --wandb.group NAME``
        (without resume arguments)."""
        cmd = [python or sys.executable, "-m", "overparam_lit", "fit"]
        for cfg in self.configs:
            cmd += ["-c", str(cfg)]
        return cmd + fit.args + ["--trainer.default_root_dir", str(fit.folder), "--wandb.group", self.name]


def _model_prefix(keys: list[str]) -> str:
    return "model.init_args." if "model.init_args.width" in keys else "model."


def _packed(stage: StageSpec) -> tuple[str | None, str | None]:
    """The seed and width keys that this stage packs (``None`` where not packed)."""
    single = {a.keys[0] for a in stage.grid if len(a.keys) == 1}
    seed = SEED_KEY if stage.pack in ("seeds", "all") and SEED_KEY in single else None
    width = next((k for k in WIDTH_KEYS if k in single), None) if stage.pack in ("widths", "all") else None
    return seed, width


def _combos(stage: StageSpec) -> list[dict[str, Any]]:
    out = []
    for combo in itertools.product(*(a.values for a in stage.grid)):
        values: dict[str, Any] = {}
        for axis, row in zip(stage.grid, combo, strict=True):
            values.update(zip(axis.keys, row, strict=True))
        out.append(values)
    return out


def _int_list(values: list[Any], key: str) -> list[int]:
    check(all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values),
          f"packed values of {key} must be non-negative integers", values,
          f"Use integers for {key}, or pack: none.")
    return [int(v) for v in values]


def _stage_fits(stage: StageSpec) -> list[tuple[dict[str, Any], list[int] | None, list[int] | None]]:
    """``(values, seeds, widths)`` per fit of a stage, in grid order."""
    seed_key, width_key = _packed(stage)
    groups: dict[str, tuple[dict[str, Any], list[Any], list[Any]]] = {}
    for values in _combos(stage):
        rest = {k: v for k, v in values.items() if k not in (seed_key, width_key)}
        key = cli_text(rest)
        entry = groups.setdefault(key, (rest, [], []))
        if seed_key and values[seed_key] not in entry[1]:
            entry[1].append(values[seed_key])
        if width_key and values[width_key] not in entry[2]:
            entry[2].append(values[width_key])
    out = []
    for rest, seeds, widths in groups.values():
        seed_list = _int_list(seeds, SEED_KEY) if seed_key else None
        if not width_key:
            out.append((rest, seed_list, None))
            continue
        widths = _int_list(widths, width_key)
        parts = [widths] if stage.width_groups is None else [
            [w for w in g if w in widths] for g in stage.width_groups]
        missing = [w for w in widths if not any(w in g for g in parts)]
        check(not missing, f"width_groups of stage {stage.name!r} leave out grid widths", missing,
              "Put every width of the grid in one group.")
        for part in parts:
            if part:
                out.append((rest, seed_list, part))
    return out


def _resolve(value: Any, lookup: _References) -> Any:
    if isinstance(value, str):
        return _REF.sub(lambda m: str(lookup(m)), value)
    if isinstance(value, list):
        return [_resolve(v, lookup) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, lookup) for k, v in value.items()}
    return value


def _args(items: dict[str, Any]) -> list[str]:
    out = []
    for key, value in items.items():
        out += [f"--{key}", cli_text(value)]
    return out


def make_plan(spec: StudySpec, configs: list[str], out: str | Path, name: str | None = None,
              extra: dict[str, Any] | None = None, stage_extra: dict[str, dict[str, Any]] | None = None
              ) -> Plan:
    """Expand a study into its fits (see the module docstring).

    Args:
        spec: the parsed sweep block.
        configs: the config files every fit reads (``-c``), in order.
        out: the sweep folder; fit ``NAME`` runs in ``out/points/NAME`` (made absolute).
        name: the sweep name (W&B group); default ``spec.name`` or the folder's name.
        extra: fixed arguments for every fit of every stage, after the stage's own (``--set``).
        stage_extra: fixed arguments for the fits of one stage, after ``extra``
            (``--set STAGE:KEY=VALUE``).
    """
    unknown = sorted(set(stage_extra or {}) - {s.name for s in spec.stages})
    check(not unknown, "arguments are set for stages the study does not have", unknown,
          f"Use one of {[s.name for s in spec.stages]} before the colon (--set STAGE:KEY=VALUE).")
    out = Path(out).resolve()  # fits run from any working folder (cluster jobs too)
    sweep_name = name or spec.name or out.name
    fits: list[Fit] = []
    by_stage: dict[str, list[Fit]] = {}
    for index, stage in enumerate(spec.stages):
        prefix = _model_prefix(stage.keys)
        made: list[Fit] = []
        for values, seeds, widths in _stage_fits(stage):
            parts = [point_name(values)] if values else []
            parts += [list_name("seeds", seeds)] if seeds else []
            parts += [list_name("widths", widths)] if widths else []
            fit_name = "_".join(parts) or "point"
            if stage.name != MAIN:
                fit_name = f"{stage.name}_{fit_name}"
            items = dict(stage.set)
            items.update(values)
            if seeds is not None:
                items[SEED_KEY] = min(seeds)
                items[f"{prefix}seeds"] = seeds
            if widths is not None:
                items[f"{prefix}widths"] = widths
            items.update(extra or {})
            items.update((stage_extra or {}).get(stage.name, {}))
            items["sweep"] = None  # fit ignores the block; the run's config.yaml stays plain
            refs = _References(out, stage.name, [s.name for s in spec.stages[:index]], by_stage,
                               values, seeds, widths)
            resolved = {k: _resolve(v, refs) for k, v in items.items()}
            made.append(Fit(fit_name, stage.name, values, seeds, widths, _args(resolved), refs.deps,
                            out / "points" / fit_name))
        names = [f.name for f in made] + [f.name for f in fits]
        dup = sorted({n for n in names if names.count(n) > 1})
        check(not dup, f"two fits of stage {stage.name!r} get the same folder name", dup[:3],
              "Make the grid values distinct.")
        by_stage[stage.name] = made
        fits += made
    return Plan([str(c) for c in configs], out, sweep_name, fits, spec)


@dataclass
class _References:
    """Resolves ``{sweep}``, ``{STAGE}`` and ``{STAGE.NAME[:ARG]}`` for one fit."""

    out: Path
    stage: str
    earlier: list[str]
    by_stage: dict[str, list[Fit]]
    values: dict[str, Any]
    seeds: list[int] | None
    widths: list[int] | None
    deps: list[str] = field(default_factory=list)

    def __call__(self, m: re.Match) -> Any:
        ref, attr, arg = m.group(1), m.group(2), m.group(3)
        if ref == "sweep":
            check(attr is None, "{sweep} takes no attribute", m.group(0), "Write {sweep}/file.pt.")
            return self.out.resolve()
        check(ref in self.earlier, f"stage {self.stage!r} refers to {m.group(0)}, which is not an earlier "
              "stage", ref, f"Refer to one of {self.earlier or 'no stage (it is the first)'} or {{sweep}}.")
        target = _match(self.by_stage[ref], self.values, self.seeds, self.widths, self.stage, ref)
        if target.name not in self.deps:
            self.deps.append(target.name)
        folder = RunFolder(target.folder.resolve())
        if attr is None:
            return folder.root
        check(not attr.startswith("_") and hasattr(RunFolder, attr), f"{m.group(0)} names no RunFolder path",
              attr, "Use a RunFolder property or method, e.g. {main.imp_level:8}.")
        thing = getattr(folder, attr)
        if not callable(thing):
            return thing
        check(arg is not None, f"{m.group(0)} needs an argument", attr, f"Write {{{ref}.{attr}:N}}.")
        return thing(int(arg) if arg.strip().lstrip("-").isdigit() else arg.strip())


def _match(candidates: list[Fit], values: dict[str, Any], seeds: list[int] | None,
           widths: list[int] | None, stage: str, ref: str) -> Fit:
    found = [f for f in candidates
             if all(cli_text(f.values[k]) == cli_text(v) for k, v in values.items() if k in f.values)
             and f.seeds == seeds and f.widths == widths]
    given = {"values": values, "seeds": seeds, "widths": widths}
    check(len(found) == 1, f"a fit of stage {stage!r} refers to stage {ref!r}, but {len(found)} of its fits "
          "have the same shared grid values and members", given,
          f"Let stage {stage!r} keep the grid keys that tell the fits of {ref!r} apart, packed the same way.")
    return found[0]

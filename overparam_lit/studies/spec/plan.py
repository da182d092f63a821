"""The plan of a study: every ``overparam-lit fit`` its stages expand to, with seeds and widths
packed into member fits and references to earlier stages' run folders resolved (see
:mod:`overparam_lit.studies.spec`)."""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.grid import cli_text, list_name, point_name
from overparam_lit.studies.spec.block import MAIN, SEED_KEY, WIDTH_KEYS, StageSpec, StudySpec
from overparam_lit.utils import ConfigError, check

_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)(?:\.([A-Za-z_][A-Za-z0-9_]*)(?::([^{}:]+))?)?\}")
"""A reference to a run folder in a fit's value: ``{sweep}``, ``{STAGE}`` or ``{STAGE.NAME[:ARG]}``."""


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
    """Expand a study into its fits (see :mod:`overparam_lit.studies.spec`).

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

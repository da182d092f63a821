"""The level state of an iterative-magnitude-pruning run (no Lightning).

:class:`ImpLevels` owns what IMP remembers between levels: the current level, the masks, the
rewind snapshot (:mod:`~overparam_lit.pruning.rewind`), the best validation accuracy seen during
the level, and the level records that ``summary.json`` lists; it decides when a level ends
(:mod:`~overparam_lit.pruning.level_length`) and, for structured runs, which channels stay
(:mod:`~overparam_lit.pruning.structured_levels`). :meth:`ImpLevels.attach` starts the levels on
a model with what :func:`~overparam_lit.pruning.targets.imp_targets` finds there;
:func:`level_scalars` are the scalars logged per level. A Lightning callback only calls them at
the right hooks and writes files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from overparam_lit.pruning.level_length import LevelLength
from overparam_lit.pruning.masks import pool_lists
from overparam_lit.pruning.members import initial_masks, member_reports, own_counts, prune_members
from overparam_lit.pruning.rewind import Rewinding
from overparam_lit.pruning.schedule import SparsitySchedule
from overparam_lit.pruning.structured_levels import StructuredLevels
from overparam_lit.pruning.targets import imp_targets

if TYPE_CHECKING:  # torch-pruning loads with the first structured run, not with the levels
    from overparam_lit.pruning.imp import ImpOptions
    from overparam_lit.pruning.structured import ChannelGroup


def level_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars logged at the end of a level: ``imp/level``, ``imp/density``, ``imp/sparsity``
    and every ``<split>/<metric>`` of the record as ``imp/<split>_<metric>``."""
    log = {"imp/level": record["level"], "imp/density": record["density"], "imp/sparsity": record["sparsity"]}
    log.update({f"imp/{k.replace('/', '_')}": record[k] for k in record
                if "/" in k and isinstance(record[k], float)})
    return log


def best_accuracies(best: Mapping[str, list[float]], metrics: Mapping[str, Tensor]) -> dict[str, list[float]]:
    """``best`` updated with every ``*/acc`` of ``metrics`` (one value per member): the largest
    value seen so far, per member."""
    out = dict(best)
    for key, values in metrics.items():
        if not key.endswith("/acc"):
            continue
        vals = [float(v) for v in torch.as_tensor(values).reshape(-1)]
        old = out.get(key)
        out[key] = vals if old is None else [max(a, b) for a, b in zip(old, vals, strict=True)]
    return out


@dataclass
class ImpLevels(LevelLength, Rewinding, StructuredLevels):
    """Level bookkeeping of IMP for a single model or a stack of ``num_members`` members.

    Args:
        schedule: densities per level.
        scope: ``global`` or ``layerwise``.
        output_fraction: per-level pruning fraction of the output layer (own rate); 0 keeps it.
        output_names: names of the output layer's prunable tensors.
        num_members: ``M`` for a stack, ``None`` for a single model.
        base: structural masks of a stack's padded members (densities count only their entries).
        prunable: names the densities are counted over (default: every masked tensor).
        groups: channel groups for structured pruning (single models): whole neurons and channels
            are pruned by norm, and :attr:`keep` holds the kept channels of every group.
        epochs_per_level: epochs of one level (:meth:`resolve_epochs`).
        own_output: the output layer's own densities at levels ``0..levels`` (instead of
            ``output_fraction``'s geometric rate).
        pools: a pool name per pruned tensor: tensors of one pool share one threshold (a layer's
            weight and bias with ``pool_bias``); ``None``: every tensor on its own.
        steps_per_level: optimizer steps of one level, when levels are measured in steps.

    A model's names, members, structural masks and groups are filled in by :meth:`attach`.
    """

    schedule: SparsitySchedule
    scope: str = "global"
    output_fraction: float = 0.0
    output_names: Sequence[str] = ()
    num_members: int | None = None
    base: Mapping[str, Tensor] | None = None
    prunable: Sequence[str] | None = None
    groups: list[ChannelGroup] | None = None
    keep: dict[str, Tensor] | None = None
    level: int = 0
    masks: dict[str, Tensor] | None = None
    snapshot: dict[str, Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, list[float]] = field(default_factory=dict)
    epochs_per_level: int | None = None
    own_output: tuple[float, ...] | None = None
    pools: dict[str, str] | None = None
    steps_per_level: int | None = None

    @classmethod
    def from_options(cls, opts: ImpOptions) -> ImpLevels:
        """Levels of IMP with ``opts``, not yet attached to a model (:meth:`attach`)."""
        own = None
        if opts.output_mode == "own":
            own = tuple(float(opts.output_density(lv)) for lv in range(opts.sparsity.levels + 1))
        return cls(opts.sparsity, opts.scope, 0.0, own_output=own)

    def attach(self, module: nn.Module, opts: ImpOptions) -> None:
        """Find what IMP prunes in ``module`` and start (density-1 masks, unless restored); a no-op
        once attached.

        Raises :class:`ConfigError` for a model IMP cannot prune with ``opts``: no prunable weight,
        a structured run of a stack or of a model without channel groups, or a schedule that keeps
        no weight of some member at its last level.
        """
        if self.prunable is not None:
            return
        targets = imp_targets(module, opts.output_layer, opts.output_mode != "dense", opts.prune_biases)
        members, base, params = targets.num_members, targets.base, dict(module.named_parameters())
        self.output_names = [w.name for w in targets.weights if w.is_output]
        if opts.pool_bias:
            self.pools = {w.name: w.module_name for w in targets.weights}
        self.num_members, self.base = members, base
        masked = {w.name: params[w.name] for w in targets.weights}
        if opts.granularity == "structured":
            self.find_groups(module, targets)
            masked = params
        self.start(masked)
        prunable = {w.name: params[w.name] for w in targets.weights}
        counts = [own_counts(prunable, base, i if members else None) for i in range(members or 1)]
        pooled = [{"+".join(p): sum(c[n] for n in p) for p in pool_lists(c, self.pools)} for c in counts]
        opts.sparsity.check_counts(pooled, layerwise=opts.scope == "layerwise")
        self.prunable = list(prunable)

    def pool_names(self) -> list[list[str]]:
        """The pools a level's densities are kept in (what random pruning draws within): the
        global pool or each layer's (weight, with ``pool_bias`` its bias), and the output layer
        when it has its own rate."""
        names = list(self.prunable or self.masks or [])
        own = set(self.own_densities(0))
        if self.scope == "global":
            main = [n for n in names if n not in own]
            return ([main] if main else []) + pool_lists([n for n in names if n in own], self.pools)
        return pool_lists(names, self.pools)

    def own_densities(self, level: int) -> dict[str, float]:
        """The output layer's tensors at their own density of ``level`` (empty when the output layer
        is kept dense or pruned on the main schedule)."""
        if self.own_output is not None:
            return {n: self.own_output[level] for n in self.output_names}
        if self.output_fraction > 0:
            return {n: (1.0 - self.output_fraction) ** level for n in self.output_names}
        return {}

    def proposal(self, module: nn.Module, level: int, compute: bool = True) -> dict[str, Tensor]:
        """The masks of ``level`` from ``module``'s weights (:meth:`next_masks`), or, without
        ``compute``, the current masks (a placeholder for a rank that receives them)."""
        assert self.masks is not None
        if not compute:
            return dict(self.masks)
        params = dict(module.named_parameters())
        return self.next_masks({n: params[n].detach() for n in self.masks}, level)

    def finish(self, module: nn.Module, final: Mapping[str, Tensor], epoch: int, step: int,
               export: bool = True) -> tuple[dict[str, Any], dict[str, Any], nn.Module | None]:
        """Record the finished level (:meth:`record`, with ``module``'s member rows); returns the
        record, ``sparsity.json`` (:meth:`level_report`) and, for a structured run with ``export``,
        the exported network, whose size the record lists as ``exported_params``."""
        rows = module.member_rows() if hasattr(module, "member_rows") else [{}]
        record = self.record(final, rows, epoch, step)
        small = self.export(module) if export and self.groups is not None else None
        if small is not None:
            record["exported_params"] = sum(p.numel() for p in small.parameters())
        return record, self.level_report(), small

    def level_report(self) -> dict[str, Any]:
        """``sparsity.json`` of the current level: a single model's report, else every member's
        under ``members``; structured runs add the kept channels under ``channels``."""
        reports = self.reports()
        report: dict[str, Any] = reports[0] if len(reports) == 1 and self.num_members is None \
            else {"members": reports}
        if self.groups is not None:
            report["channels"] = self.kept_channels()
        return report

    def start(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Density-1 masks of the prunable ``weights`` (unless already restored)."""
        if self.masks is None:
            if self.groups is not None:
                self.masks = self.start_channels(weights)
            else:
                self.masks = initial_masks(weights, self.base, stacked=self.num_members is not None)
        return self.masks

    def next_masks(self, weights: Mapping[str, Tensor], level: int) -> dict[str, Tensor]:
        """Masks of ``level``: the largest-magnitude survivors of every member."""
        assert self.masks is not None
        if self.groups is not None:
            return self.channel_masks(weights, level)
        return prune_members(weights, self.masks, self.schedule.density(level), self.scope,
                             self.own_densities(level), self.base, self.num_members, self.pools)

    def advance(self, masks: Mapping[str, Tensor]) -> None:
        """Enter the next level with ``masks``."""
        self.masks = {n: m.cpu() for n, m in masks.items()}
        self.level += 1
        self.best = {}

    def observe(self, metrics: Mapping[str, Tensor]) -> None:
        """Keep the best value of each accuracy seen during the level (per member)."""
        self.best = best_accuracies(self.best, metrics)

    def record(self, final: Mapping[str, Tensor], member_rows: Sequence[Mapping[str, Any]],
               epoch: int, step: int) -> dict[str, Any]:
        """The record of the finished level: densities and final/best metrics, as means over
        members with every member listed under ``members``; appended to :attr:`history`."""
        reports = self.reports()
        per_member = []
        for i, (rep, row) in enumerate(zip(reports, member_rows, strict=True)):
            entry: dict[str, Any] = {**dict(row), "density": rep["total"]["density"],
                                     "sparsity": rep["total"]["sparsity"], "kept": rep["total"]["kept"],
                                     "prunable": rep["total"]["numel"]}
            entry.update({k: float(torch.as_tensor(v).reshape(-1)[i]) for k, v in final.items()})
            entry.update({f"best_{k}": v[i] for k, v in self.best.items()})
            per_member.append(entry)
        keys = [k for k in per_member[0] if k not in ("member", "seed", "width", "num_params")]
        record: dict[str, Any] = {"level": self.level, "target_density": self.schedule.density(self.level)}
        for k in keys:
            vals = [e[k] for e in per_member if isinstance(e.get(k), (int, float))]
            if vals:
                record[k] = sum(vals) / len(vals)
        record.update({"epoch": epoch, "global_step": step, "pools": self.pool_names()})
        if self.num_members is not None:
            record["members"] = per_member
        self.history = [h for h in self.history if h["level"] != self.level] + [record]
        return record

    def reports(self) -> list[dict]:
        """Per-member sparsity reports of the current masks."""
        assert self.masks is not None
        masks = {n: m for n, m in self.masks.items() if self.prunable is None or n in self.prunable}
        return member_reports(masks, self.base, self.num_members)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the run exactly."""
        return {"level": self.level, "masks": self.masks, "snapshot": self.snapshot,
                "history": self.history, "best": self.best, "keep": self.keep,
                "epochs_per_level": self.epochs_per_level, "steps_per_level": self.steps_per_level}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.level = int(state["level"])
        self.masks = state["masks"]
        self.snapshot = state["snapshot"]
        self.history = list(state["history"])
        self.best = dict(state.get("best") or {})
        self.keep = state.get("keep")
        if state.get("epochs_per_level") is not None:
            self.epochs_per_level = int(state["epochs_per_level"])
        if state.get("steps_per_level") is not None:
            self.steps_per_level = int(state["steps_per_level"])

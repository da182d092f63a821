"""The state of an iterative-magnitude-pruning run, level by level (no Lightning).

:class:`ImpLevels` owns what IMP remembers between levels: the current level, the masks, the
rewind snapshot, the best validation accuracy seen during the level, and the level records that
``summary.json`` lists. A Lightning callback only calls it at the right hooks and writes files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from overparam_lit.pruning.members import initial_masks, member_reports, prune_members
from overparam_lit.pruning.schedule import SparsitySchedule
from overparam_lit.pruning.structured import ChannelGroup, group_masks, prune_channels


@dataclass
class ImpLevels:
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

    def start(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Density-1 masks of the prunable ``weights`` (unless already restored)."""
        if self.masks is None:
            if self.groups is not None:
                self.keep = {g.root: torch.ones(g.size, dtype=torch.bool) for g in self.groups}
                self.masks = group_masks(self.groups, weights, self.keep)
            else:
                self.masks = initial_masks(weights, self.base, stacked=self.num_members is not None)
        return self.masks

    def next_masks(self, weights: Mapping[str, Tensor], level: int) -> dict[str, Tensor]:
        """Masks of ``level``: the largest-magnitude survivors of every member."""
        assert self.masks is not None
        if self.groups is not None:
            density = self.schedule.density(level)
            self.keep = prune_channels(self.groups, weights, self.keep, density, self.scope)
            return group_masks(self.groups, weights, self.keep)
        own = {}
        if self.output_fraction > 0:
            own = {n: (1.0 - self.output_fraction) ** level for n in self.output_names}
        return prune_members(weights, self.masks, self.schedule.density(level), self.scope, own,
                             self.base, self.num_members)

    def advance(self, masks: Mapping[str, Tensor]) -> None:
        """Enter the next level with ``masks``."""
        self.masks = {n: m.cpu() for n, m in masks.items()}
        self.level += 1
        self.best = {}

    def observe(self, metrics: Mapping[str, Tensor]) -> None:
        """Keep the best value of each accuracy seen during the level (per member)."""
        for key, values in metrics.items():
            if not key.endswith("/acc"):
                continue
            vals = [float(v) for v in torch.as_tensor(values).reshape(-1)]
            old = self.best.get(key)
            self.best[key] = vals if old is None else [max(a, b) for a, b in zip(old, vals, strict=True)]

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
        record.update({"epoch": epoch, "global_step": step})
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
                "history": self.history, "best": self.best, "keep": self.keep}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.level = int(state["level"])
        self.masks = state["masks"]
        self.snapshot = state["snapshot"]
        self.history = list(state["history"])
        self.best = dict(state.get("best") or {})
        self.keep = state.get("keep")

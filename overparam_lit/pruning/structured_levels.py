"""Structured iterative magnitude pruning: whole neurons and channels, level by level (no Lightning).

:class:`StructuredLevels` is the part of :class:`~overparam_lit.pruning.levels.ImpLevels` that
prunes channel groups (:mod:`~overparam_lit.pruning.structured`): it finds a model's groups, keeps
the channels of every group per level, reports them and exports the smaller network. torch-pruning
loads here on first use, with the first structured run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from overparam_lit.protocols import network_of
from overparam_lit.pruning.schedule import SparsitySchedule
from overparam_lit.pruning.targets import ImpTargets, example_input
from overparam_lit.utils import ConfigError, check

if TYPE_CHECKING:  # torch-pruning loads with the first structured run, not with the levels
    from overparam_lit.pruning.structured import ChannelGroup


class StructuredLevels:
    """The channel groups of :class:`~overparam_lit.pruning.levels.ImpLevels` (whose fields it
    reads): :attr:`groups` and the kept channels of every group, :attr:`keep`."""

    schedule: SparsitySchedule
    scope: str
    groups: list[ChannelGroup] | None
    keep: dict[str, Tensor] | None

    def find_groups(self, module: nn.Module, targets: ImpTargets) -> None:
        """Find the channel groups of ``module`` (its targets ``targets``).

        Raises :class:`ConfigError` for a stack, a network torch-pruning cannot trace, or a model
        without neuron or channel groups.
        """
        members = targets.num_members
        check(members is None, "structured IMP prunes single models only", members or 0,
              "Use granularity 'unstructured' with members, or prune a single model.")
        from overparam_lit.pruning.structured import channel_groups

        out, prefix = targets.output_layer, targets.prefix
        try:
            self.groups = channel_groups(network_of(module), example_input(module),
                                         out[len(prefix):], prefix=prefix)  # type: ignore[index]
        except (ValueError, TypeError) as err:
            raise ConfigError(f"structured IMP cannot prune this model: {err}") from err
        check(len(self.groups) > 0, "the model has no prunable neuron or channel groups",
              type(module).__name__, "Use granularity 'unstructured' or a model with hidden layers.")

    def start_channels(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Masks of ``weights`` that keep every channel of every group (level 0)."""
        from overparam_lit.pruning.structured import group_masks

        self.keep = {g.root: torch.ones(g.size, dtype=torch.bool) for g in self.groups}
        return group_masks(self.groups, weights, self.keep)

    def channel_masks(self, weights: Mapping[str, Tensor], level: int) -> dict[str, Tensor]:
        """Masks of ``level``: the channels of largest norm in ``weights`` at the level's density."""
        from overparam_lit.pruning.structured import group_masks, prune_channels

        density = self.schedule.density(level)
        self.keep = prune_channels(self.groups, weights, self.keep, density, self.scope)
        return group_masks(self.groups, weights, self.keep)

    def kept_channels(self) -> dict[str, Any]:
        """``sparsity.json``'s ``channels``: the kept channels of every group."""
        from overparam_lit.pruning.structured import channel_report

        return channel_report(self.groups, self.keep)

    def export(self, module: nn.Module) -> nn.Module:
        """The structurally pruned network of ``module`` (``module.net`` with only the kept channels)."""
        from overparam_lit.pruning.structured import export_pruned

        assert self.keep is not None
        return export_pruned(module.net, example_input(module), self.keep, prefix="net.")

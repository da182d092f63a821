"""Pruning as pure functions (torch only): selection, magnitude and random masks, structured
channel groups through torch-pruning, and ticket starts with their controls."""

from overparam_lit.pruning.imp import ImpLevels
from overparam_lit.pruning.masks import (
    SCOPES,
    apply_masks_,
    density,
    full_masks,
    kept_count,
    magnitude_prune,
    mask_grads_,
    mask_optimizer_state_,
    prune_remaining,
    random_masks_like,
    sparsity_report,
)
from overparam_lit.pruning.members import initial_masks, member_reports, own_counts, prune_members
from overparam_lit.pruning.schedule import SCHEDULES, SparsitySchedule
from overparam_lit.pruning.select import PrunableWeight, output_layer_name, prunable_weights
from overparam_lit.pruning.structured import (
    ChannelGroup,
    channel_groups,
    channel_report,
    channel_scores,
    export_pruned,
    group_masks,
    prune_channels,
)
from overparam_lit.pruning.tickets import (
    TICKET_MODES,
    Ticket,
    check_ticket,
    fresh_init_state,
    load_state_,
    load_ticket,
    start_from_ticket,
)

__all__ = [
    "SCHEDULES",
    "SCOPES",
    "ImpLevels",
    "SparsitySchedule",
    "initial_masks",
    "member_reports",
    "own_counts",
    "prune_members",
    "TICKET_MODES",
    "ChannelGroup",
    "PrunableWeight",
    "Ticket",
    "apply_masks_",
    "channel_groups",
    "channel_report",
    "channel_scores",
    "check_ticket",
    "density",
    "export_pruned",
    "fresh_init_state",
    "full_masks",
    "group_masks",
    "kept_count",
    "load_state_",
    "load_ticket",
    "magnitude_prune",
    "mask_grads_",
    "mask_optimizer_state_",
    "output_layer_name",
    "prunable_weights",
    "prune_channels",
    "prune_remaining",
    "random_masks_like",
    "sparsity_report",
    "start_from_ticket",
]

"""Pruning as pure functions (torch only): selection, magnitude and random masks, structured
channel groups through torch-pruning, ticket starts with their controls, the mask type of masked
training and the level state of IMP."""

from overparam_lit.utils import lazy_exports

lazy_exports(__name__, {  # each name loads with its submodule on first use
    "binding": ("Masks", "structural_masks"),
    "imp": (
        "GRANULARITIES", "REWIND_MODES", "ImpLevels", "ImpOptions", "ImpTargets", "example_input",
        "imp_targets", "level_scalars",
    ),
    "masks": (
        "SCOPES", "apply_masks_", "density", "full_masks", "kept_count", "magnitude_prune", "mask_grads_",
        "mask_optimizer_state_", "prune_remaining", "random_masks_like", "sparsity_report",
    ),
    "members": ("initial_masks", "member_reports", "own_counts", "prune_members"),
    "schedule": ("SCHEDULES", "SparsitySchedule"),
    "select": ("PrunableWeight", "output_layer_name", "prunable_weights"),
    "structured": (
        "ChannelGroup", "channel_groups", "channel_report", "channel_scores", "export_pruned",
        "group_masks", "prune_channels",
    ),
    "tickets": (
        "TICKET_MODES", "Ticket", "check_ticket", "fresh_init_state", "load_state_", "load_ticket",
        "module_state", "start_from_ticket", "start_module",
    ),
})

__all__ = [
    "GRANULARITIES",
    "REWIND_MODES",
    "SCHEDULES",
    "SCOPES",
    "ImpLevels",
    "ImpOptions",
    "ImpTargets",
    "Masks",
    "example_input",
    "imp_targets",
    "level_scalars",
    "structural_masks",
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
    "module_state",
    "mask_grads_",
    "mask_optimizer_state_",
    "output_layer_name",
    "prunable_weights",
    "prune_channels",
    "prune_remaining",
    "random_masks_like",
    "sparsity_report",
    "start_from_ticket",
    "start_module",
]

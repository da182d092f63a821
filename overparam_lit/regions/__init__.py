"""Decision regions: plane banks, label maps, fragmentation, agreement and pictures.

Pure functions and small dataclasses on torch, numpy and scipy (no Lightning); the
``DecisionRegions`` callback drives them during training.
"""

from overparam_lit.utils import lazy_exports

lazy_exports(__name__, {  # each name loads with its submodule on first use
    "anchors": ("POLICIES", "choose_anchors"),
    "bank": ("PlaneBank",),
    "maps": ("LabelMaps", "label_maps", "load_label_maps", "map_bytes"),
    "metrics": (
        "Fragmentation", "agreement", "anchor_consistency", "boundary_fraction", "cohen_kappa",
        "fragmentation", "region_counts",
    ),
    "options": ("RegionOptions", "check_map_size", "plane_bank_for"),
    "planes": ("input_plane_bank", "make_plane_bank", "plane_through"),
    "snapshot": ("Snapshot", "measure"),
})

__all__ = [
    "POLICIES",
    "Fragmentation",
    "LabelMaps",
    "Snapshot",
    "PlaneBank",
    "RegionOptions",
    "agreement",
    "anchor_consistency",
    "boundary_fraction",
    "check_map_size",
    "choose_anchors",
    "cohen_kappa",
    "fragmentation",
    "input_plane_bank",
    "label_maps",
    "load_label_maps",
    "make_plane_bank",
    "map_bytes",
    "measure",
    "plane_bank_for",
    "plane_through",
    "region_counts",
]

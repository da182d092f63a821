"""Decision regions: plane banks, label maps, fragmentation, agreement and pictures.

Pure functions and small dataclasses on torch, numpy and scipy (no Lightning); the
``DecisionRegions`` callback drives them during training.
"""

from overparam_lit.regions.maps import LabelMaps, label_maps, load_label_maps, map_bytes
from overparam_lit.regions.metrics import (
    Fragmentation,
    agreement,
    anchor_consistency,
    boundary_fraction,
    cohen_kappa,
    fragmentation,
    region_counts,
)
from overparam_lit.regions.options import RegionOptions, check_map_size, plane_bank_for
from overparam_lit.regions.planes import (
    POLICIES,
    PlaneBank,
    choose_anchors,
    input_plane_bank,
    make_plane_bank,
    plane_through,
)
from overparam_lit.regions.snapshot import Snapshot, measure

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

"""The decision-region study (snapshots of how the net carves 2-D planes of its input space, and
their fragmentation), declared for :mod:`overparam_lit.registry`."""

from overparam_lit.registry import Study, register

REGIONS = register(Study(
    "regions",
    callback="overparam_lit.callbacks.regions.DecisionRegions",
    options="overparam_lit.regions.options.RegionOptions",
    artifacts={
        "regions": "regions/",
        "regions_bank": "regions/bank.pt",                   # the plane bank
        "regions_maps": "regions/maps_epoch{:04d}.npz",      # one snapshot's label maps
        "regions_picture": "regions/epoch{:04d}.png",
        "regions_history": "regions/history.json",
        "regions_overview": "regions/overview.png",          # planes x snapshots
        "regions_filmstrip_png": "regions/filmstrip.png",
        "regions_filmstrip_gif": "regions/filmstrip.gif",
    },
    fragment="regions",
    reader="overparam_lit.studies.runs.regions_rows",
    figures=("regions",),
))

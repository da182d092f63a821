"""Curvature of the training loss: Hessian-vector products, Lanczos, SLQ density, trace.

Pure torch / numpy / scipy (no Lightning): functions take a model, tensors and plain
arguments and return tensors, arrays or small dataclasses. The ``*_batched`` functions probe
the ``M`` members of a stacked model through one block-diagonal product per step.
"""

from overparam_lit.utils import lazy_exports

lazy_exports(__name__, {  # each name loads with its submodule on first use
    "ends": ("LanczosResult", "gap_free_bounds"),
    "hvp": ("HessianOperator", "layer_subsets", "pruning_masks_from_module"),
    "outliers": ("DEFAULT_GAP_RATIO", "gap_ratios", "outliers_above_gap"),
    "lanczos": ("lanczos", "lanczos_batched", "rademacher", "tridiagonal_eig"),
    "slq": ("SLQResult", "slq", "slq_batched"),
    "spectrum": ("SpectrumSummary", "count_outliers", "hessian_spectrum", "hessian_spectrum_batched"),
    "trace": ("TraceResult", "hutchinson_trace"),
})

__all__ = [
    "DEFAULT_GAP_RATIO",
    "HessianOperator",
    "LanczosResult",
    "SLQResult",
    "SpectrumSummary",
    "TraceResult",
    "count_outliers",
    "gap_free_bounds",
    "gap_ratios",
    "hessian_spectrum",
    "hessian_spectrum_batched",
    "hutchinson_trace",
    "lanczos",
    "lanczos_batched",
    "layer_subsets",
    "outliers_above_gap",
    "pruning_masks_from_module",
    "rademacher",
    "slq",
    "slq_batched",
    "tridiagonal_eig",
]

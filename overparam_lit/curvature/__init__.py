"""Curvature of the training loss: Hessian-vector products, Lanczos, SLQ density, trace.

Pure torch / numpy / scipy (no Lightning): functions take a model, tensors and plain
arguments and return tensors, arrays or small dataclasses. The ``*_batched`` functions probe
the ``M`` members of a stacked model through one block-diagonal product per step.
"""

from overparam_lit.curvature.ends import LanczosResult, gap_free_bounds
from overparam_lit.curvature.hvp import HessianOperator, layer_subsets, pruning_masks_from_module
from overparam_lit.curvature.lanczos import lanczos, lanczos_batched, rademacher, tridiagonal_eig
from overparam_lit.curvature.slq import SLQResult, slq, slq_batched
from overparam_lit.curvature.spectrum import (
    SpectrumSummary,
    count_outliers,
    hessian_spectrum,
    hessian_spectrum_batched,
)
from overparam_lit.curvature.trace import TraceResult, hutchinson_trace

__all__ = [
    "HessianOperator",
    "LanczosResult",
    "SLQResult",
    "SpectrumSummary",
    "TraceResult",
    "count_outliers",
    "gap_free_bounds",
    "hessian_spectrum",
    "hessian_spectrum_batched",
    "hutchinson_trace",
    "lanczos",
    "lanczos_batched",
    "layer_subsets",
    "pruning_masks_from_module",
    "rademacher",
    "slq",
    "slq_batched",
    "tridiagonal_eig",
]

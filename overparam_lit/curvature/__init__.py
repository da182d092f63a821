"""Curvature of the training loss: Hessian-vector products, Lanczos, SLQ density, trace.

Pure torch / numpy / scipy (no Lightning): functions take a model, tensors and plain
arguments and return tensors, arrays or small dataclasses.
"""

from overparam_lit.curvature.hvp import HessianOperator, layer_subsets, pruning_masks_from_module
from overparam_lit.curvature.lanczos import LanczosResult, lanczos, rademacher, tridiagonal_eig
from overparam_lit.curvature.slq import SLQResult, slq
from overparam_lit.curvature.spectrum import SpectrumSummary, count_outliers, hessian_spectrum
from overparam_lit.curvature.trace import TraceResult, hutchinson_trace

__all__ = [
    "HessianOperator",
    "LanczosResult",
    "SLQResult",
    "SpectrumSummary",
    "TraceResult",
    "count_outliers",
    "hessian_spectrum",
    "hutchinson_trace",
    "lanczos",
    "layer_subsets",
    "pruning_masks_from_module",
    "rademacher",
    "slq",
    "tridiagonal_eig",
]

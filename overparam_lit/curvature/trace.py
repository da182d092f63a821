"""Hutchinson estimate of the trace of a symmetric operator, with its standard error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from overparam_lit.curvature.lanczos import MatVec, rademacher
from overparam_lit.utils import check


@dataclass
class TraceResult:
    """``trace`` (mean of the samples ``z^T H z``), its ``stderr`` and the ``samples``."""

    trace: float
    stderr: float
    samples: np.ndarray
    num_matvecs: int


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    num_samples: int = 20,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TraceResult:
    """Estimate ``tr H`` by ``mean(z^T H z)`` over Rademacher vectors ``z``.

    The standard error is the sample standard deviation over ``sqrt(num_samples)``.
    """
    check(num_samples >= 2, "Hutchinson needs at least two samples for a standard error",
          num_samples, "Set num_samples >= 2.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    samples = np.empty(num_samples)
    for i in range(num_samples):
        z = rademacher(dim, gen, dtype=dtype, device=device)
        samples[i] = float(torch.dot(z, matvec(z).to(dtype=dtype, device=device)))
    return TraceResult(
        trace=float(samples.mean()),
        stderr=float(samples.std(ddof=1) / np.sqrt(num_samples)),
        samples=samples,
        num_matvecs=num_samples,
    )

"""Stochastic Lanczos quadrature (SLQ) of a symmetric operator's spectral density.

Each run starts Lanczos from a normalised Rademacher vector ``z / sqrt(dim)``; the Ritz
values of its tridiagonal matrix are quadrature nodes and the squared first components of
its eigenvectors their weights, so that ``sum_j w_j f(theta_j) ~ (1/dim) tr f(H)``. Averaging
over runs gives the spectral density as a sum of point masses (no smoothing); the fraction of
eigenvalues below a threshold is read off these masses directly. A Gaussian-smoothed density
(width stated by the caller) is only for pictures.

The same runs give Hutchinson samples of the trace for free: ``dim * alpha_1 = z^T H z``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from overparam_lit.curvature.lanczos import BatchedMatVec, MatVec, lanczos_batched, rademacher, scatter_rows
from overparam_lit.utils import check


@dataclass
class SLQResult:
    """Nodes and weights of SLQ.

    Attributes:
        nodes: ``(runs, m)`` Ritz values (rows shorter than ``m`` are padded with weight 0).
        weights: ``(runs, m)`` quadrature weights; each row sums to one.
        trace_samples: ``(runs,)`` Hutchinson samples ``z^T H z`` of the trace.
        dim: dimension of the operator.
        num_matvecs: operator products spent.
    """

    nodes: np.ndarray
    weights: np.ndarray
    trace_samples: np.ndarray
    dim: int
    num_matvecs: int

    def fraction_below(self, threshold: float) -> float:
        """Estimated fraction of eigenvalues strictly below ``threshold``."""
        return float((self.weights * (self.nodes < threshold)).sum(axis=1).mean())

    def negative_fraction(self, eps: float = 1e-2, lambda_max: float | None = None) -> float:
        """Fraction of eigenvalues below ``-eps * lambda_max`` (the index, without smoothing).

        ``eps`` keeps numerically zero eigenvalues (a large cluster in network Hessians) out of
        the count; ``lambda_max`` defaults to the largest SLQ node. SLQ resolves the interior
        of the spectrum to roughly ``(lambda_max - lambda_min) / num_iters``, so an ``eps`` far
        below ``1 / num_iters`` needs more Lanczos steps per run to be meaningful.
        """
        lam = float(self.nodes[self.weights > 0].max()) if lambda_max is None else lambda_max
        return self.fraction_below(-eps * abs(lam))

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian-smoothed density on ``grid`` (integrates to ~1), kernel width ``sigma``."""
        check(sigma > 0, "the density width sigma must be positive", sigma, "Pass sigma > 0.")
        grid = np.asarray(grid, dtype=np.float64)
        diff = grid[None, None, :] - self.nodes[:, :, None]
        kern = np.exp(-0.5 * (diff / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        return (self.weights[:, :, None] * kern).sum(axis=1).mean(axis=0)

    @property
    def trace(self) -> float:
        """Hutchinson estimate of the trace from the SLQ start vectors."""
        return float(self.trace_samples.mean())

    @property
    def trace_stderr(self) -> float:
        """Standard error of :attr:`trace` (0 with a single run)."""
        n = self.trace_samples.size
        return float(self.trace_samples.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def slq_batched(
    matvec: BatchedMatVec,
    mask: Tensor,
    num_runs: int = 10,
    num_iters: int = 80,
    generators: Sequence[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[SLQResult]:
    """:func:`slq` for ``M`` members through one block-diagonal product per step.

    ``matvec`` and ``mask`` are as in :func:`~overparam_lit.curvature.lanczos_batched`. Run ``r``
    of member ``i`` starts from ``rademacher(d_i, generators[i])`` scattered into its active
    coordinates (row-major), so member ``i``'s result equals :func:`slq` on its restricted operator
    with that generator; the generators continue from wherever they are (for example after the
    Lanczos start of :func:`~overparam_lit.curvature.hessian_spectrum_batched`).
    """
    check(num_runs >= 1, "SLQ needs at least one run", num_runs, "Set num_runs >= 1.")
    check(num_iters >= 1, "SLQ needs at least one Lanczos step", num_iters, "Set num_iters >= 1.")
    dims = [int(d) for d in mask.sum(dim=1).tolist()]
    check(generators is None or len(generators) == len(dims), "one generator per member needed",
          None if generators is None else len(generators), f"Pass {len(dims)} generators.")
    gens = list(generators) if generators is not None else \
        [torch.Generator().manual_seed(0) for _ in dims]
    widths = [min(num_iters, d) for d in dims]
    nodes = [np.zeros((num_runs, m)) for m in widths]
    weights = [np.zeros((num_runs, m)) for m in widths]
    traces = [np.zeros(num_runs) for _ in dims]
    spent = [0 for _ in dims]
    for r in range(num_runs):
        z = scatter_rows(mask, lambda i, d: rademacher(d, gens[i], dtype=dtype), dtype, device)
        runs = lanczos_batched(matvec, mask, k=1, max_iters=num_iters, tol=0.0, starts=z,
                               dtype=dtype, device=device)
        for i, res in enumerate(runs):
            n = res.ritz_values.size
            nodes[i][r, :n], weights[i][r, :n] = res.ritz_values, res.ritz_weights
            traces[i][r] = dims[i] * res.alpha[0]
            spent[i] += res.num_matvecs
    return [SLQResult(nodes[i], weights[i], traces[i], dims[i], spent[i]) for i in range(len(dims))]


def slq(
    matvec: MatVec,
    dim: int,
    num_runs: int = 10,
    num_iters: int = 80,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> SLQResult:
    """Run ``num_runs`` Lanczos runs of ``num_iters`` products from Rademacher starts
    (the one-member case of :func:`slq_batched`)."""
    check(dim >= 1, "SLQ needs a space of dimension >= 1", dim, "Check the parameter subset.")
    return slq_batched(lambda x: matvec(x[0]).reshape(1, -1), torch.ones(1, dim, dtype=torch.bool),
                       num_runs, num_iters, None if generator is None else [generator], dtype, device)[0]

"""One call that probes a Hessian operator: Lanczos extremes, SLQ density, trace, outliers.

:func:`hessian_spectrum_batched` probes the ``M`` members of a stacked model for the products of
one; :func:`hessian_spectrum` is its one-member case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from overparam_lit.curvature.lanczos import BatchedMatVec, LanczosResult, MatVec, lanczos_batched
from overparam_lit.curvature.slq import SLQResult, slq_batched
from overparam_lit.utils import check


@dataclass
class SpectrumSummary:
    """Everything one probe measures (plain numbers and arrays, ready to log and save).

    ``lambda_min`` is the bottom Ritz value only when its sign is resolved
    (``lambda_min_resolved``), else NaN: ``lambda_min_bound`` (``>= lambda_min``, always; negative
    means negative curvature is proven) and ``lambda_min_lower`` (``<= lambda_min`` with
    probability 0.99 over the random start, gap-free) are always there. See
    :class:`~overparam_lit.curvature.LanczosResult` for what each flag means.
    ``num_hvps_top`` / ``num_hvps_bottom`` are the products each Lanczos end needed,
    ``num_hvps_slq`` those of SLQ, ``num_hvps`` all of them.
    """

    lambda_max: float
    lambda_min: float
    top: np.ndarray
    bottom: np.ndarray
    negative_fraction: float
    negative_eps: float
    trace: float
    trace_stderr: float
    num_hvps: int
    dim: int
    lanczos: LanczosResult = field(repr=False)
    slq: SLQResult | None = field(default=None, repr=False)
    lambda_min_bound: float = float("nan")
    lambda_min_lower: float = float("nan")
    lambda_min_resolved: bool = False
    lambda_min_converged: bool = False
    lambda_max_converged: bool = False
    noise: float = 0.0
    num_hvps_top: int = 0
    num_hvps_bottom: int = 0
    num_hvps_slq: int = 0

    def scalars(self, prefix: str = "hessian/") -> dict[str, float]:
        """Flat ``{key: value}`` of the scalars, ``top_k`` per index; flags as 0.0 / 1.0; a
        ``lambda_min_lower`` of ``-inf`` (too few steps for a bracket) is logged as NaN."""
        lower = self.lambda_min_lower if np.isfinite(self.lambda_min_lower) else float("nan")
        out = {
            f"{prefix}lambda_max": self.lambda_max,
            f"{prefix}lambda_min": self.lambda_min,
            f"{prefix}lambda_min_bound": self.lambda_min_bound,
            f"{prefix}lambda_min_lower": lower,
            f"{prefix}lambda_min_resolved": float(self.lambda_min_resolved),
            f"{prefix}lambda_min_converged": float(self.lambda_min_converged),
            f"{prefix}lambda_max_converged": float(self.lambda_max_converged),
            f"{prefix}noise": self.noise,
            f"{prefix}trace": self.trace,
            f"{prefix}trace_stderr": self.trace_stderr,
            f"{prefix}negative_fraction": self.negative_fraction,
            f"{prefix}num_hvps": float(self.num_hvps),
            f"{prefix}num_hvps_top": float(self.num_hvps_top),
            f"{prefix}num_hvps_bottom": float(self.num_hvps_bottom),
            f"{prefix}num_hvps_slq": float(self.num_hvps_slq),
        }
        for i, v in enumerate(self.top):
            out[f"{prefix}top_k/{i}"] = float(v)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays for an ``.npz`` file."""
        lz = self.lanczos
        out = {
            "top": self.top, "bottom": self.bottom,
            "top_residuals": lz.top_residuals, "bottom_residuals": lz.bottom_residuals,
            "lanczos_alpha": lz.alpha, "lanczos_beta": lz.beta,
            "ritz_values": lz.ritz_values, "ritz_residuals": lz.ritz_residuals,
            "lambda_max": np.float64(self.lambda_max), "lambda_min": np.float64(self.lambda_min),
            "lambda_min_bound": np.float64(self.lambda_min_bound),
            "lambda_min_lower": np.float64(self.lambda_min_lower),
            "lambda_min_resolved": np.bool_(self.lambda_min_resolved),
            "lambda_min_converged": np.bool_(self.lambda_min_converged),
            "lambda_max_converged": np.bool_(self.lambda_max_converged),
            "noise": np.float64(self.noise),
            "negative_fraction": np.float64(self.negative_fraction),
            "negative_eps": np.float64(self.negative_eps),
            "trace": np.float64(self.trace), "trace_stderr": np.float64(self.trace_stderr),
            "num_hvps": np.int64(self.num_hvps), "num_hvps_top": np.int64(self.num_hvps_top),
            "num_hvps_bottom": np.int64(self.num_hvps_bottom),
            "num_hvps_slq": np.int64(self.num_hvps_slq), "dim": np.int64(self.dim),
        }
        if self.slq is not None:
            out.update(slq_nodes=self.slq.nodes, slq_weights=self.slq.weights,
                       trace_samples=self.slq.trace_samples)
        return out


def summarise(lz: LanczosResult, sq: SLQResult | None, negative_eps: float) -> SpectrumSummary:
    """A :class:`SpectrumSummary` from one Lanczos run and (optionally) its SLQ runs."""
    lam_max = float(lz.top[0])
    neg, tr, tr_se = float("nan"), float("nan"), float("nan")
    if sq is not None:
        neg = sq.negative_fraction(negative_eps, lam_max)
        tr, tr_se = sq.trace, sq.trace_stderr
    slq_hvps = 0 if sq is None else sq.num_matvecs
    return SpectrumSummary(
        lambda_max=lam_max, lambda_min=lz.lambda_min, top=lz.top, bottom=lz.bottom,
        negative_fraction=neg, negative_eps=negative_eps, trace=tr, trace_stderr=tr_se,
        num_hvps=lz.num_matvecs + slq_hvps, dim=lz.dim, lanczos=lz, slq=sq,
        lambda_min_bound=lz.lambda_min_bound, lambda_min_lower=lz.lambda_min_lower,
        lambda_min_resolved=lz.sign_resolved, lambda_min_converged=lz.lambda_min_converged,
        lambda_max_converged=lz.lambda_max_converged, noise=lz.noise, num_hvps_top=lz.top_matvecs,
        num_hvps_bottom=lz.bottom_matvecs, num_hvps_slq=slq_hvps,
    )


def hessian_spectrum_batched(
    matvec: BatchedMatVec,
    mask: Tensor,
    k: int = 5,
    lanczos_iters: int = 100,
    tol: float = 1e-4,
    slq_runs: int = 10,
    slq_iters: int = 80,
    negative_eps: float = 1e-2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    bottom_iters: int | None = None,
) -> list[SpectrumSummary]:
    """:func:`hessian_spectrum` of ``M`` members through one block-diagonal product per step.

    ``matvec`` maps ``(M, D)`` to ``(M, D)`` block-diagonally and ``mask`` is the bool ``(M, D)``
    of each member's active coordinates (see :func:`~overparam_lit.curvature.lanczos_batched`).
    Member ``i`` draws its Lanczos start and then its SLQ starts from its own
    ``torch.Generator().manual_seed(seed)``, so its summary equals :func:`hessian_spectrum` of its
    restricted operator with the same ``seed`` (to float rounding). Each summary counts that
    member's own products; the batched run costs the largest of them.
    """
    dims = [int(d) for d in mask.sum(dim=1).tolist()]
    space = f"The Hessian has {dims[0]} dimensions" if len(dims) == 1 else \
        f"The smallest member's Hessian has {min(dims)} dimensions"
    check(1 <= k <= min(dims), "k (eigenvalues per end) exceeds the number of parameters", k,
          f"{space}; use 1 <= k <= {min(dims)}.")
    check(lanczos_iters >= 1, "lanczos_iters must be >= 1", lanczos_iters, "Use e.g. 100.")
    check(bottom_iters is None or bottom_iters >= lanczos_iters,
          "bottom_iters must be at least lanczos_iters", bottom_iters,
          f"Set bottom_iters to {lanczos_iters} or more, or None to use lanczos_iters.")
    check(negative_eps >= 0, "negative_eps must be >= 0", negative_eps, "Use e.g. 1e-2.")
    gens = [torch.Generator().manual_seed(int(seed)) for _ in dims]
    lzs = lanczos_batched(matvec, mask, k=k, max_iters=lanczos_iters, tol=tol, generators=gens,
                          dtype=dtype, device=device, bottom_iters=bottom_iters)
    sqs: list[SLQResult | None] = [None] * len(dims)
    if slq_runs > 0:
        sqs = list(slq_batched(matvec, mask, num_runs=slq_runs, num_iters=slq_iters,
                               generators=gens, dtype=dtype, device=device))
    return [summarise(lz, sq, negative_eps) for lz, sq in zip(lzs, sqs, strict=True)]


def hessian_spectrum(
    matvec: MatVec,
    dim: int,
    k: int = 5,
    lanczos_iters: int = 100,
    tol: float = 1e-4,
    slq_runs: int = 10,
    slq_iters: int = 80,
    negative_eps: float = 1e-2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    bottom_iters: int | None = None,
) -> SpectrumSummary:
    """Probe a symmetric operator: top-k / bottom-k by Lanczos, density, index and trace by SLQ.

    ``negative_fraction`` counts SLQ mass below ``-negative_eps * lambda_max``. The trace is
    Hutchinson's estimate from the SLQ start vectors (its standard error needs ``slq_runs >= 2``).
    With ``slq_runs=0`` no SLQ runs: the negative fraction and trace are NaN. ``bottom_iters``
    is the bottom end's own budget (see :func:`~overparam_lit.curvature.lanczos`; default
    ``lanczos_iters``); ``lambda_min`` is NaN unless its sign is resolved (see
    :class:`SpectrumSummary`).
    """
    check(dim >= 1, "the Hessian needs at least one dimension", dim, "Check the parameter subset.")
    return hessian_spectrum_batched(
        lambda x: matvec(x[0]).reshape(1, -1), torch.ones(1, dim, dtype=torch.bool), k=k,
        lanczos_iters=lanczos_iters, tol=tol, slq_runs=slq_runs, slq_iters=slq_iters,
        negative_eps=negative_eps, seed=seed, dtype=dtype, device=device, bottom_iters=bottom_iters,
    )[0]


def count_outliers(eigenvalues: np.ndarray, max_count: int | None = None) -> int:
    """Number of top eigenvalues separated from the bulk: the position of the largest ratio
    gap ``lambda_i / lambda_{i+1}`` among the positive values sorted in descending order."""
    ev = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    ev = ev[ev > 0]
    if max_count is not None:
        ev = ev[: max_count + 1]
    if ev.size < 2:
        return int(ev.size)
    ratios = ev[:-1] / ev[1:]
    return int(np.argmax(ratios) + 1)

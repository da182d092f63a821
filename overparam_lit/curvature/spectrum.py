"""One call that probes a Hessian operator: Lanczos extremes, SLQ density, trace, outliers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from overparam_lit.curvature.lanczos import LanczosResult, MatVec, lanczos
from overparam_lit.curvature.slq import SLQResult, slq
from overparam_lit.utils import check


@dataclass
class SpectrumSummary:
    """Everything one probe measures (plain numbers and arrays, ready to log and save)."""

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

    def scalars(self, prefix: str = "hessian/") -> dict[str, float]:
        """Flat ``{key: value}`` of the scalars, ``top_k`` per index."""
        out = {
            f"{prefix}lambda_max": self.lambda_max,
            f"{prefix}lambda_min": self.lambda_min,
            f"{prefix}trace": self.trace,
            f"{prefix}trace_stderr": self.trace_stderr,
            f"{prefix}negative_fraction": self.negative_fraction,
            f"{prefix}num_hvps": float(self.num_hvps),
        }
        for i, v in enumerate(self.top):
            out[f"{prefix}top_k/{i}"] = float(v)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays for an ``.npz`` file."""
        out = {
            "top": self.top, "bottom": self.bottom,
            "lanczos_alpha": self.lanczos.alpha, "lanczos_beta": self.lanczos.beta,
            "ritz_values": self.lanczos.ritz_values,
            "ritz_residuals": self.lanczos.ritz_residuals,
            "lambda_max": np.float64(self.lambda_max), "lambda_min": np.float64(self.lambda_min),
            "negative_fraction": np.float64(self.negative_fraction),
            "negative_eps": np.float64(self.negative_eps),
            "trace": np.float64(self.trace), "trace_stderr": np.float64(self.trace_stderr),
            "num_hvps": np.int64(self.num_hvps), "dim": np.int64(self.dim),
        }
        if self.slq is not None:
            out.update(slq_nodes=self.slq.nodes, slq_weights=self.slq.weights,
                       trace_samples=self.slq.trace_samples)
        return out


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
) -> SpectrumSummary:
    """Probe a symmetric operator: top-k / bottom-k by Lanczos, density, index and trace by SLQ.

    ``negative_fraction`` counts SLQ mass below ``-negative_eps * lambda_max``. The trace is
    Hutchinson's estimate from the SLQ start vectors (its standard error needs ``slq_runs >= 2``).
    With ``slq_runs=0`` no SLQ runs: the negative fraction and trace are NaN.
    """
    check(1 <= k <= dim, "k (eigenvalues per end) exceeds the number of parameters", k,
          f"The Hessian has {dim} dimensions; use k <= {dim}.")
    check(negative_eps >= 0, "negative_eps must be >= 0", negative_eps, "Use e.g. 1e-2.")
    gen = torch.Generator().manual_seed(int(seed))
    lz = lanczos(matvec, dim, k=k, max_iters=lanczos_iters, tol=tol, generator=gen,
                 dtype=dtype, device=device)
    spent = lz.num_matvecs
    lam_max, lam_min = float(lz.top[0]), float(lz.bottom[0])
    sq = None
    neg, tr, tr_se = float("nan"), float("nan"), float("nan")
    if slq_runs > 0:
        sq = slq(matvec, dim, num_runs=slq_runs, num_iters=slq_iters, generator=gen,
                 dtype=dtype, device=device)
        spent += sq.num_matvecs
        neg = sq.negative_fraction(negative_eps, lam_max)
        tr, tr_se = sq.trace, sq.trace_stderr
    return SpectrumSummary(
        lambda_max=lam_max, lambda_min=lam_min, top=lz.top, bottom=lz.bottom,
        negative_fraction=neg, negative_eps=negative_eps, trace=tr, trace_stderr=tr_se,
        num_hvps=spent, dim=dim, lanczos=lz, slq=sq,
    )


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

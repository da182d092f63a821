"""Pictures of Hessian spectra (matplotlib figures that never touch pyplot's global state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from overparam_lit.curvature.spectrum import SpectrumSummary
from overparam_lit.utils import atomic_savefig


def density_grid(summaries: Sequence[SpectrumSummary], width: float) -> tuple[np.ndarray, float]:
    """A common eigenvalue grid for the summaries' densities and the Gaussian width used:
    ``width`` times the widest ``lambda_max - bottom Ritz value`` range."""
    lo = min(float(np.nanmin(s.bottom)) for s in summaries)
    hi = max(s.lambda_max for s in summaries)
    sigma = width * max(hi - lo, 1e-12)
    return np.linspace(lo - 4 * sigma, hi + 4 * sigma, 600), sigma


def densities(summaries: Sequence[SpectrumSummary], width: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Every summary's Gaussian-smoothed SLQ density on one grid: ``(grid, (M, G), sigma)``."""
    grid, sigma = density_grid(summaries, width)
    dens = np.stack([s.slq.density(grid, sigma) if s.slq is not None else np.zeros_like(grid)
                     for s in summaries])
    return grid, dens, sigma


def density_figure(summaries: Sequence[SpectrumSummary], grid: np.ndarray, dens: np.ndarray, sigma: float,
                   labels: Sequence[str], step: int, path: str | Path) -> Path:
    """The densities (log scale) of one probe, one curve per member (up to 8 drawn), with the top-k
    Lanczos values of the first."""
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    floor = max(float(dens.max()) * 1e-8, 1e-300)
    for i in range(min(8, len(summaries))):
        ax.semilogy(grid, np.maximum(dens[i], floor), lw=1.1, label=labels[i] if len(summaries) > 1 else None)
    for v in summaries[0].top:
        ax.axvline(v, color="C3", lw=0.6, alpha=0.6)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    neg = np.nanmean([s.negative_fraction for s in summaries])
    ax.set_title(f"Hessian spectrum, step {step}: neg. frac. {neg:.3f}\n"
                 f"Gaussian width {sigma:.3g}; red: top-{len(summaries[0].top)} (Lanczos)", fontsize=8)
    if len(summaries) > 1:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=110)

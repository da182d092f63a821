"""Counting the outlier eigenvalues that stand above the bulk of a Hessian spectrum.

Both rules read the top-k eigenvalues of one probe (Lanczos), sorted in descending order, and use
only the positive ones.

* :func:`outliers_above_gap` (the rule the Hessian figure counts with): the outliers end at the
  **last** ratio gap ``lambda_m / lambda_{m+1} >= ratio`` (default 1.3) among the top k, and there
  are none when no consecutive pair is that far apart. At the top of a continuous bulk consecutive eigenvalues
  are dense (their ratio tends to 1 as the dimension grows), so the bulk edge leaves the last
  large gap; gaps *among* the outliers can be larger or smaller than it, which is why the largest
  gap may stop inside them. The count is at most ``k - 1`` (a gap must be seen inside the top k).
* :func:`~overparam_lit.curvature.count_outliers` (the largest gap): the position of the
  largest ratio gap. It finds one outlier whenever the first eigenvalue dominates, however many
  separated eigenvalues follow it.

Sagun et al. (2017) and Papyan (2019, 2020) report about C outliers (C the number of classes) for
cross-entropy nets; ``tests/unit/curvature/test_curvature_outliers.py`` checks both rules on
matrices with known outliers.
"""

from __future__ import annotations

import numpy as np

from overparam_lit.utils import check

DEFAULT_GAP_RATIO = 1.3
"""The smallest ratio ``lambda_m / lambda_{m+1}`` that separates outliers from the bulk: above the
largest consecutive ratio at the top of a Wishart bulk of dimension 300 (under 1.2, tested) and of
the bulk of the MNIST-1D MLPs' Hessians (about 1.05-1.2 below their outliers)."""


def positive_descending(eigenvalues: np.ndarray) -> np.ndarray:
    """The positive entries of ``eigenvalues`` in descending order (float64)."""
    ev = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())[::-1]
    return ev[ev > 0]


def outliers_above_gap(eigenvalues: np.ndarray, ratio: float = DEFAULT_GAP_RATIO) -> int:
    """Number of outliers above the bulk: the largest ``m`` with ``lambda_m / lambda_{m+1} >= ratio``
    among the positive top eigenvalues (descending), or 0 when there is no such gap."""
    check(ratio > 1, "the gap ratio must exceed 1", ratio, f"Use e.g. {DEFAULT_GAP_RATIO}.")
    ev = positive_descending(eigenvalues)
    if ev.size < 2:
        return 0
    gaps = np.flatnonzero(ev[:-1] / ev[1:] >= ratio)
    return int(gaps[-1] + 1) if gaps.size else 0


def gap_ratios(eigenvalues: np.ndarray) -> np.ndarray:
    """``lambda_i / lambda_{i+1}`` of the positive top eigenvalues in descending order (length
    one less than their number)."""
    ev = positive_descending(eigenvalues)
    return ev[:-1] / ev[1:] if ev.size >= 2 else np.zeros(0)

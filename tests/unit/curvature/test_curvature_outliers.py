"""Outlier counting rules on matrices with known outliers (a spiked Wishart bulk), from exact
eigenvalues (numpy) and from the framework's own Lanczos top-k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from overparam_lit.curvature import count_outliers, gap_ratios, lanczos, outliers_above_gap
from overparam_lit.utils import ConfigError


def spiked(dim: int, spikes: np.ndarray, seed: int = 0) -> np.ndarray:
    """A Wishart bulk ``X^T X / n`` (Marchenko-Pastur, aspect 1/4: eigenvalues in about
    [0.25, 2.25]) plus ``sum_i s_i u_i u_i^T`` on orthonormal random ``u_i``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * dim, dim))
    bulk = x.T @ x / (4 * dim)
    u, _ = np.linalg.qr(rng.standard_normal((dim, len(spikes))))
    return bulk + (u * spikes) @ u.T


# Eight outliers spread over four decades: the gaps among them (about x4) are larger than the gap
# from the smallest one (about 5.3) to the bulk edge (about 2.25), so the largest gap stops early.
SPREAD = 4.0 * 4.0 ** np.arange(8)[::-1]


def test_rules_on_exact_eigenvalues_of_a_spiked_matrix() -> None:
    ev = np.linalg.eigvalsh(spiked(300, SPREAD))
    top = np.sort(ev)[::-1][:20]
    assert top[7] > 4.5 > 3.0 > top[8]  # the eight spikes stand above a bulk edge near 2.25
    assert outliers_above_gap(top) == 8
    assert count_outliers(top) < 8
    # equal spikes: both rules see them
    top = np.sort(np.linalg.eigvalsh(spiked(300, np.full(5, 10.0) + np.arange(5))))[::-1][:20]
    assert outliers_above_gap(top) == 5 and count_outliers(top) == 5
    # no spike: the top of a Wishart bulk has no gap of 1.3
    top = np.sort(np.linalg.eigvalsh(spiked(300, np.zeros(0))))[::-1][:20]
    assert gap_ratios(top).max() < 1.2 and outliers_above_gap(top) == 0


def test_rule_on_lanczos_top_k_matches_the_exact_count() -> None:
    a = spiked(400, SPREAD, seed=3)
    exact = outliers_above_gap(np.sort(np.linalg.eigvalsh(a))[::-1][:20])
    op = torch.from_numpy(a)
    res = lanczos(lambda v: op @ v, 400, k=20, max_iters=200, tol=1e-8, dtype=torch.float64,
                  generator=torch.Generator().manual_seed(0), which="top")
    assert exact == 8 and outliers_above_gap(res.top) == 8


def test_gap_rule_edge_cases() -> None:
    assert outliers_above_gap(np.r_[5.0]) == 0 and outliers_above_gap(np.zeros(0)) == 0
    # negative and zero eigenvalues are not part of the count; the last gap of at least 1.3 wins
    assert outliers_above_gap(np.r_[-3.0, 0.0, 1.0, 1.1, 4.0, 10.0]) == 2
    assert outliers_above_gap(np.r_[10.0, 4.0, 1.1, 1.0], ratio=3.0) == 2
    assert outliers_above_gap(np.r_[10.0, 9.0, 8.5], ratio=3.0) == 0
    with pytest.raises(ConfigError, match="must exceed 1"):
        outliers_above_gap(np.r_[2.0, 1.0], ratio=1.0)

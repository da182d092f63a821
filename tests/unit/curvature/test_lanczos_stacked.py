"""Member-by-member reorthogonalisation of the stacked Lanczos core.

References: the batched textbook projection it replaced (classical Gram-Schmidt twice through
``bmm`` over the whole ``(M, j, D)`` basis, kept here), and single-model probes of each member's
own network.

Tolerances. Both projections compute the same sums in another order, so each inner product of
length ``D`` differs by rounding only: about ``sqrt(D) * eps`` of its scale for random rounding
errors (the worst case is ``D * eps``; the sums here are far from it). Full reorthogonalisation
keeps the basis orthonormal to working precision, so such a perturbation of each step moves the
converged Ritz values, their residuals and the quadrature weights by a bounded multiple of it, not
a growing one; ``ULPS = 300`` units of ``sqrt(D) * eps * scale`` leave room for that multiple
(float64: ~3e-13 for D = 90, well under the 1e-10 asked of float64; float32: ~3e-4, a few hundred
float32 roundings of the longest sum). ``scale`` is the spectral scale ``max |theta|``.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from overparam_lit.curvature import hessian_spectrum_batched, lanczos_batched, slq_batched
from overparam_lit.curvature.probe import ProbeOptions, probe_loss, probe_spectra
from overparam_lit.models import MLP

lz = importlib.import_module("overparam_lit.curvature.lanczos")  # the module, not its function
ULPS = 300


def batched_projection(Q: torch.Tensor, j: int, w: torch.Tensor, members) -> torch.Tensor:
    """The projection the core used before: two Gram-Schmidt passes as ``bmm`` over all members."""
    basis = Q[:, :j]
    coeffs = torch.bmm(basis, w.unsqueeze(2)).squeeze(2)
    v = w - torch.bmm(coeffs.unsqueeze(1), basis).squeeze(1)
    v = v - torch.bmm(torch.bmm(basis, v.unsqueeze(2)).transpose(1, 2), basis).squeeze(1)
    w.copy_(v)
    return coeffs


def tolerance(dtype: torch.dtype, dim: int) -> float:
    return ULPS * math.sqrt(dim) * torch.finfo(dtype).eps


def blocks(dtype: torch.dtype, dims=(90, 61, 35), D: int = 120):
    """Dense symmetric blocks with separated ends, padded into ``D`` coordinates by masks."""
    g = torch.Generator().manual_seed(3)
    mats, mask = [], torch.zeros(len(dims), D, dtype=torch.bool)
    for i, d in enumerate(dims):
        ev = torch.cat([-torch.rand(3, generator=g, dtype=torch.float64) - 0.5,
                        torch.rand(d - 6, generator=g, dtype=torch.float64) * (i + 1),
                        torch.rand(3, generator=g, dtype=torch.float64) + i + 2])
        Qd, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        mats.append(((Qd * ev) @ Qd.T).to(dtype))
        mask[i, torch.randperm(D, generator=g)[:d].sort().values] = True

    def matvec(X: torch.Tensor) -> torch.Tensor:
        Y = torch.zeros_like(X)
        for i, A in enumerate(mats):
            Y[i, mask[i]] = A @ X[i, mask[i]]
        return Y

    return matvec, mask, mats


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_equals_the_batched_one(dtype):
    g = torch.Generator().manual_seed(0)
    M, j, D = 3, 12, 1000
    Q = torch.linalg.qr(torch.randn(M, D, j, generator=g, dtype=torch.float64))[0].transpose(1, 2)
    Q = torch.cat([Q, torch.full((M, 4, D), float("nan"), dtype=torch.float64)], 1).to(dtype).contiguous()
    w = torch.randn(M, D, generator=g, dtype=torch.float64).to(dtype)
    want_w, got_w = w.clone(), w.clone()
    want = batched_projection(Q, j, want_w, range(M))
    got = lz.reorthogonalise(Q, j, got_w, [2, 0, 1])
    tol = tolerance(dtype, D) * float(w.norm(dim=1).max())
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    torch.testing.assert_close(got_w, want_w, rtol=0, atol=tol)
    assert float((Q[:, :j] @ got_w.unsqueeze(2)).abs().max()) <= tol  # orthogonal to the basis
    skipped = w.clone()
    lz.reorthogonalise(Q, j, skipped, [1])  # members not listed are left alone
    assert torch.equal(skipped[[0, 2]], w[[0, 2]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lanczos_and_slq_equal_the_batched_projection(dtype, monkeypatch):
    matvec, mask, mats = blocks(dtype)
    D = mask.shape[1]

    def run():
        gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
        res = lanczos_batched(matvec, mask, k=3, max_iters=30, tol=1e-6, generators=gens, dtype=dtype,
                              bottom_iters=60, return_vectors=True)
        sq = slq_batched(matvec, mask, num_runs=3, num_iters=25, generators=gens, dtype=dtype)
        return res, sq

    with monkeypatch.context() as patch:
        patch.setattr(lz, "reorthogonalise", batched_projection)
        before, slq_before = run()
    after, slq_after = run()
    for old, new in zip(before, after, strict=True):
        scale = float(np.abs(old.ritz_values).max())
        tol = tolerance(dtype, D)
        for key in ("num_matvecs", "converged", "top_matvecs", "bottom_matvecs", "exhausted", "dim"):
            assert getattr(new, key) == getattr(old, key), key
        for key in ("top_passed", "bottom_passed"):
            np.testing.assert_array_equal(getattr(new, key), getattr(old, key))
        for key in ("ritz_values", "top", "bottom", "alpha", "beta", "ritz_residuals", "top_residuals",
                    "bottom_residuals"):
            np.testing.assert_allclose(getattr(new, key), getattr(old, key), rtol=0, atol=tol * scale,
                                       err_msg=key)
        np.testing.assert_allclose(new.ritz_weights, old.ritz_weights, rtol=0, atol=tol)
        # the noise is itself a sum of roundings: equal to within the roundings that make it
        assert abs(new.noise - old.noise) <= tol * scale
        assert new.lambda_min_bound == pytest.approx(old.lambda_min_bound, rel=0, abs=2 * tol * scale)
        assert new.sign_resolved == old.sign_resolved
        torch.testing.assert_close(new.ritz_vectors, old.ritz_vectors, rtol=0, atol=tol)
    for old, new in zip(slq_before, slq_after, strict=True):
        scale = float(np.abs(old.nodes).max())
        np.testing.assert_allclose(new.nodes, old.nodes, rtol=0, atol=tolerance(dtype, D) * scale)
        np.testing.assert_allclose(new.weights, old.weights, rtol=0, atol=tolerance(dtype, D))
        np.testing.assert_allclose(new.trace_samples, old.trace_samples, rtol=0,
                                   atol=tolerance(dtype, D) * scale * new.dim)
        assert new.num_matvecs == old.num_matvecs
    for res, A in zip(after, mats, strict=True):  # and both are right
        ev = np.linalg.eigvalsh(A.double().numpy())
        np.testing.assert_allclose(res.top, ev[::-1][:3], rtol=1e-5)
        np.testing.assert_allclose(res.bottom, ev[:3], rtol=1e-5, atol=1e-5)


def moments(sq, powers=(0, 1, 2, 3)) -> np.ndarray:
    """SLQ density moments ``mean over runs of sum_j w_j theta_j^p`` (``tr H^p / dim``)."""
    return np.array([(sq.weights * sq.nodes ** p).sum(axis=1).mean() for p in powers])


def test_stacked_probe_equals_single_model_probes():
    """One probe of S stacked MLPs gives each member the probe of its own network."""
    torch.manual_seed(0)
    S = 3
    stack = MLP(input_shape=(1, 40), width=24, depth=2, seeds=list(range(S))).double()
    gx = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 40, generator=gx, dtype=torch.float64)
    y = torch.randint(0, 10, (64,), generator=gx)
    opts = ProbeOptions(k=3, lanczos_iters=60, tol=1e-8, slq_runs=3, slq_iters=30, dtype="float64",
                        bottom_iters=200)
    net = stack.net.eval()
    got = probe_spectra(net, probe_loss(stack), x, y, [n for n, _ in net.named_parameters()], {}, S, opts)
    singles = stack.member_networks()
    assert len(got) == S
    for mine, single in zip(got, singles, strict=True):
        single.eval()
        want = probe_spectra(single, nn.functional.cross_entropy, x, y,
                             [n for n, _ in single.named_parameters()], {}, None, opts)[0]
        D = mine.dim
        assert D == want.dim == sum(p.numel() for p in single.parameters())
        scale = abs(want.lambda_max)
        tol = tolerance(torch.float64, D) * scale
        np.testing.assert_allclose(mine.top, want.top, rtol=0, atol=tol)
        np.testing.assert_allclose(mine.bottom, want.bottom, rtol=0, atol=tol)
        assert mine.lanczos.num_matvecs == want.lanczos.num_matvecs
        for p, (a, b) in enumerate(zip(moments(mine.slq), moments(want.slq), strict=True)):
            assert abs(a - b) <= tolerance(torch.float64, D) * scale ** p, p
        assert mine.trace == pytest.approx(want.trace, rel=0, abs=tol * D)


def test_batched_spectrum_uses_each_members_own_products_only():
    """A finished member is not reorthogonalised again: its rows stay zero and its numbers fixed."""
    matvec, mask, mats = blocks(torch.float64)
    seen: list[list[int]] = []
    original = lz.reorthogonalise

    def spy(Q, j, w, members):
        seen.append(list(members))
        return original(Q, j, w, members)

    lz.reorthogonalise = spy
    try:
        out = hessian_spectrum_batched(matvec, mask, k=2, lanczos_iters=20, tol=1e-5, slq_runs=0,
                                       dtype=torch.float64, bottom_iters=90)
    finally:
        lz.reorthogonalise = original
    steps = [s.lanczos.num_matvecs for s in out]
    assert len(seen) == max(steps)
    for i, n in enumerate(steps):
        assert sum(i in members for members in seen) == n
    assert seen[0] != seen[1] or len(seen[0]) == 1  # the order alternates between steps

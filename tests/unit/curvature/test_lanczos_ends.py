"""Per-end Lanczos bounds (the sign of lambda_min) and member-wise (batched) Lanczos and SLQ.

Independent references: a 10^5-dimensional operator with a known spectrum (a diagonal in a random
orthogonal basis of Householder reflections), dense ``numpy.linalg.eigh`` of small blocks, and the
single-member functions on each member's restricted operator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from overparam_lit.curvature import (
    gap_free_bounds,
    hessian_spectrum,
    hessian_spectrum_batched,
    lanczos,
    lanczos_batched,
    slq,
    slq_batched,
)
from overparam_lit.utils import ConfigError

N = 100_000
LAMBDA_MIN, LAMBDA_MAX = -7.19e-4, 0.467  # the bug report's network: lambda_min / lambda_max ~ 1.5e-3


def known_spectrum(shift: float = 0.0) -> np.ndarray:
    """Outliers up to 0.467, a positive bulk, ~2000 tiny negatives down to -7.19e-4 whose density
    rises towards zero, and ~78,000 eigenvalues in a cluster at zero (+-1e-7); plus ``shift``."""
    rng = np.random.default_rng(0)
    outliers = np.geomspace(0.05, LAMBDA_MAX, 10)
    bulk = rng.exponential(2e-3, 20_000).clip(0, 0.04)
    negative = LAMBDA_MIN * np.r_[1.0, 0.95 * rng.power(6, 1999) ** 8]
    zero = rng.uniform(-1e-7, 1e-7, N - 10 - 20_000 - 2000)
    return np.sort(np.r_[outliers, bulk, negative, zero]) + shift


class Householder:
    """``v -> Q diag(ev) Q^T v`` with ``Q`` a product of three random Householder reflections."""

    def __init__(self, ev: np.ndarray, dtype: torch.dtype) -> None:
        g = torch.Generator().manual_seed(1)
        self.ev = torch.as_tensor(ev, dtype=dtype)[torch.randperm(ev.size, generator=g)]
        u = torch.randn(3, ev.size, generator=g, dtype=torch.float64)
        self.u = (u / u.norm(dim=1, keepdim=True)).to(dtype)
        self.calls = 0

    def _reflect(self, v: torch.Tensor, order: range | reversed) -> torch.Tensor:
        for i in order:
            v = v - 2 * (v @ self.u[i]) * self.u[i]
        return v

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self._reflect(self.ev * self._reflect(v, range(3)), reversed(range(3)))


@pytest.fixture(scope="module")
def big() -> tuple[Householder, np.ndarray]:
    ev = known_spectrum()
    return Householder(ev, torch.float32), ev


def test_old_stop_rule_case_says_unresolved(big):
    """The bug report: k=1, bottom, tol 1e-3 stopped after ~12 products on a positive Ritz value."""
    op, ev = big
    res = lanczos(op, N, k=1, which="bottom", tol=1e-3, max_iters=12)
    assert res.bottom[0] > 0 > ev[0]  # the Ritz value has the wrong sign ...
    assert res.bottom_residuals[0] > 1e-3 * LAMBDA_MAX * 1e-2  # ... (the old rule passed it here)
    # ... and is reported as what it is: unconverged at its own scale, sign unknown
    assert not res.converged and not res.lambda_min_converged and not res.sign_resolved
    assert np.isnan(res.lambda_min)
    assert res.lambda_min_lower <= ev[0] <= res.lambda_min_bound


def test_bottom_budget_resolves_lambda_min_on_a_1e5_operator(big):
    op, ev = big
    op.calls = 0
    res = lanczos(op, N, k=1, tol=1e-3, max_iters=40, bottom_iters=300)
    assert op.calls == res.num_matvecs <= 140  # measured: 122 in float32, 133 in float64
    assert res.top_matvecs <= 20 and res.top_converged  # the top end is cheap ...
    assert res.bottom_matvecs == res.num_matvecs > 40  # ... the bottom end needed its own budget
    assert res.lambda_min_converged and res.sign_resolved and res.lambda_min < 0
    # interlacing: the bound is above lambda_min; the residual bound reaches down to it
    assert ev[0] <= res.lambda_min_bound < 0
    assert abs(res.lambda_min - ev[0]) <= res.bottom_residuals[0] + res.noise
    assert abs(res.lambda_min - ev[0]) <= 1e-3 * abs(ev[0])
    assert abs(res.top[0] - ev[-1]) <= 1e-5 * ev[-1]
    assert res.lambda_min_lower <= ev[0]


def test_never_a_wrong_sign_at_any_budget():
    """Budgets from 4 to 60 products on two spectra: negative lambda_min below a cluster at zero,
    and the same spectrum shifted by +5e-4 (weight decay: a cluster of 78,000 eigenvalues at +5e-4
    with 3 eigenvalues below zero). A resolved sign is always the true sign; the bound always
    holds; the brackets always contain lambda_min."""
    for shift in (0.0, 5e-4):
        ev = known_spectrum(shift)
        op = Householder(ev, torch.float32)
        resolved = []
        for m in (4, 8, 12, 16, 24, 40, 60):
            res = lanczos(op, N, k=1, max_iters=m, tol=1e-3)
            assert res.lambda_min_lower <= ev[0] <= res.lambda_min_bound
            if res.sign_resolved:
                assert np.sign(res.lambda_min) == np.sign(ev[0])
            else:
                assert np.isnan(res.lambda_min)
            resolved.append(res.sign_resolved)
        assert not resolved[0] and resolved[-1]  # unresolved early, resolved (negative) later


def test_positive_lambda_min_is_resolved_only_by_the_gap_free_bracket():
    ev = known_spectrum(2e-3)  # every eigenvalue >= 1.28e-3
    op = Householder(ev, torch.float64)
    short = lanczos(op, N, k=1, max_iters=100, tol=1e-2, dtype=torch.float64)
    assert short.bottom[0] > 0 and short.converged  # accurate to 1% at its own scale ...
    assert not short.sign_resolved and np.isnan(short.lambda_min)  # ... but the sign not proven
    assert short.lambda_min_lower < 0 < ev[0] <= short.lambda_min_bound
    long = lanczos(op, N, k=1, max_iters=150, tol=1e-6, dtype=torch.float64)
    assert 0 < long.lambda_min_lower <= ev[0] <= long.lambda_min_bound
    assert long.sign_resolved and long.lambda_min == pytest.approx(ev[0], rel=1e-6)


def test_gap_free_bracket_holds_over_random_starts():
    rng = np.random.default_rng(3)
    n = 200
    basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = np.r_[-1e-3, rng.uniform(0, 1e-6, n - 2), 1.0]  # a lone eigenvalue below a cluster
    H = torch.as_tensor(basis @ np.diag(ev) @ basis.T)
    for seed in range(40):
        res = lanczos(lambda v: H @ v, n, k=1, max_iters=30, tol=0, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(seed))
        lo, hi = res.gap_free_bounds(0.9)
        assert lo <= ev[0] and hi >= ev[-1]
    # the formula: eps = (log(2 * 1.648 sqrt(n) / delta) / (2q - 1))^2 with q = m - 1
    eps = (np.log(2 * 1.648 * np.sqrt(n) / 0.1) / 57) ** 2
    d = eps * 2.0 / (1 - 2 * eps)
    assert gap_free_bounds(-1.0, 1.0, n, 30, 0.9) == pytest.approx((-1 - d, 1 + d))
    assert gap_free_bounds(-1.0, 1.0, n, 3, 0.9) == (-np.inf, np.inf)  # too few steps
    # an exhausted Krylov space gives the exact bracket; a given start gives none
    full = lanczos(lambda v: H @ v, n, k=1, max_iters=n, tol=0, dtype=torch.float64)
    assert full.exhausted and full.lambda_min_lower == pytest.approx(ev[0], abs=1e-12)
    given = lanczos(lambda v: H @ v, n, k=1, max_iters=30, tol=0, dtype=torch.float64,
                    start=torch.ones(n, dtype=torch.float64))
    assert given.lambda_min_lower == -np.inf


def test_operator_noise_is_measured_and_widens_the_bound():
    """A nonsymmetric error (as in float32 HVPs) is seen in the dropped couplings; a negative
    eigenvalue smaller than that noise is not claimed."""
    rng = np.random.default_rng(4)
    n = 300
    basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = np.r_[-1e-6, np.linspace(1e-3, 1.0, n - 1)]
    H = torch.as_tensor(basis @ np.diag(ev) @ basis.T)
    skew = torch.as_tensor(rng.standard_normal((n, n)))
    skew = (skew - skew.T) / torch.linalg.matrix_norm(skew - skew.T, ord=2)  # ||skew|| = 1
    clean = lanczos(lambda v: H @ v, n, k=1, max_iters=n, tol=0, dtype=torch.float64)
    assert clean.noise < 1e-12 and clean.sign_resolved and clean.lambda_min < 0
    for eta in (1e-5, 1e-3):
        noisy = lanczos(lambda v, eta=eta: H @ v + eta * (skew @ v), n, k=1, max_iters=n, tol=0,
                        dtype=torch.float64)
        # the symmetric part is H: its lambda_min is under the bound, and the noise is seen
        assert noisy.lambda_min_bound >= ev[0]
        assert 0.1 * eta <= noisy.noise <= 10 * eta
        assert not noisy.sign_resolved and np.isnan(noisy.lambda_min)


def blocks_case(dtype: torch.dtype = torch.float64):
    """Three dense symmetric blocks (dimensions 90, 61, 35) padded into D = 90 with masks; each
    has 3 separated negative and 3 separated top eigenvalues around a bulk in [0, i + 1].
    Returns the batched matvec, mask, blocks and a call log."""
    g = torch.Generator().manual_seed(0)
    dims, D = (90, 61, 35), 90
    blocks, mask = [], torch.zeros(3, D, dtype=torch.bool)
    for i, d in enumerate(dims):
        A = torch.randn(d, d, generator=g, dtype=torch.float64)
        ev = torch.cat([-torch.rand(3, generator=g, dtype=torch.float64) - 0.5,
                        torch.rand(d - 6, generator=g, dtype=torch.float64) * (i + 1),
                        torch.rand(3, generator=g, dtype=torch.float64) + i + 2])
        Qd, _ = torch.linalg.qr(A)
        blocks.append(((Qd * ev) @ Qd.T).to(dtype))
        mask[i, torch.randperm(D, generator=g)[:d].sort().values] = True
    calls: list[torch.Tensor] = []

    def matvec(X: torch.Tensor) -> torch.Tensor:
        calls.append(X.clone())
        Y = torch.full_like(X, float("nan"))  # garbage in inactive coordinates: Lanczos drops it
        for i in range(3):
            Y[i, mask[i]] = blocks[i] @ X[i, mask[i]]
        return Y

    return matvec, mask, blocks, calls


@pytest.mark.numeric
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_lanczos_matches_eigh_and_single_runs(dtype):
    matvec, mask, blocks, calls = blocks_case(dtype)
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    batch = lanczos_batched(matvec, mask, k=3, max_iters=30, tol=1e-6, generators=gens,
                            dtype=dtype, bottom_iters=60, return_vectors=True)
    # batched vs single Lanczos: the same recurrence with the block products summed in another
    # order; 30-60 steps amplify the rounding (eps * sqrt(n) per product) by the loss of
    # orthogonality, so allow ~1e6 eps: 1e-10 for float64 (measured 6e-15), 1e-4 for float32
    # (measured 1e-5 relative, 8e-6 absolute on values of size ~4)
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    for i, (res, A) in enumerate(zip(batch, blocks, strict=True)):
        d = A.shape[0]
        ev = np.linalg.eigvalsh(A.double().numpy())
        one = lanczos(lambda v, A=A: A @ v, d, k=3, max_iters=30, tol=1e-6, dtype=dtype,
                      bottom_iters=60, generator=torch.Generator().manual_seed(11 + i),
                      return_vectors=True)
        assert res.num_matvecs == one.num_matvecs and res.dim == d
        np.testing.assert_allclose(res.ritz_values, one.ritz_values, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(res.ritz_weights, one.ritz_weights, rtol=0, atol=1e-3 * rtol ** 0.5)
        for key in ("converged", "top_matvecs", "bottom_matvecs", "sign_resolved", "exhausted"):
            assert getattr(res, key) == getattr(one, key), key
        assert res.ritz_vectors.shape == (d, 6)
        torch.testing.assert_close(res.ritz_vectors.abs(), one.ritz_vectors.abs(),
                                   rtol=1e-3, atol=1e-3)
        if res.converged:
            np.testing.assert_allclose(res.top, ev[::-1][:3], rtol=1e-5)
            np.testing.assert_allclose(res.bottom, ev[:3], rtol=1e-5)
        assert res.lambda_min < 0 and ev[0] <= res.lambda_min_bound
    assert max(r.num_matvecs for r in batch) == len(calls)
    for j, X in enumerate(calls):  # inactive coordinates and finished members are zero rows
        assert torch.all(X[~mask] == 0)
        for i, res in enumerate(batch):
            if j >= res.num_matvecs:
                assert torch.all(X[i] == 0)
    assert all(r.converged for r in batch)


@pytest.mark.numeric
def test_batched_slq_and_spectrum_match_single_members():
    matvec, mask, blocks, _ = blocks_case()
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batch = slq_batched(matvec, mask, num_runs=4, num_iters=25, generators=gens,
                        dtype=torch.float64)
    summaries = hessian_spectrum_batched(matvec, mask, k=2, lanczos_iters=20, tol=1e-5, slq_runs=3,
                                         slq_iters=15, seed=7, dtype=torch.float64, bottom_iters=50)
    for i, A in enumerate(blocks):
        d = A.shape[0]
        ev = np.linalg.eigvalsh(A.numpy())
        one = slq(lambda v, A=A: A @ v, d, num_runs=4, num_iters=25, dtype=torch.float64,
                  generator=torch.Generator().manual_seed(i + 1))
        np.testing.assert_allclose(batch[i].nodes, one.nodes, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(batch[i].trace_samples, one.trace_samples, rtol=1e-10)
        assert batch[i].negative_fraction(0.01) == pytest.approx(one.negative_fraction(0.01), abs=1e-12)
        assert batch[i].num_matvecs == one.num_matvecs == 4 * 25
        assert abs(batch[i].trace - ev.sum()) <= 4 * batch[i].trace_stderr
        single = hessian_spectrum(lambda v, A=A: A @ v, d, k=2, lanczos_iters=20, tol=1e-5,
                                  slq_runs=3, slq_iters=15, seed=7, dtype=torch.float64,
                                  bottom_iters=50)
        got, want = summaries[i].scalars(), single.scalars()
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
        assert single.lambda_min == pytest.approx(ev[0], rel=1e-6)
        assert single.lambda_min_resolved and single.num_hvps == single.lanczos.num_matvecs + 45


def test_spectrum_summary_with_too_small_a_budget(big):
    op, ev = big
    s = hessian_spectrum(op, N, k=1, lanczos_iters=12, tol=1e-3, slq_runs=0)
    keys = s.scalars()
    assert np.isnan(keys["hessian/lambda_min"]) and keys["hessian/lambda_min_resolved"] == 0.0
    assert keys["hessian/lambda_min_converged"] == 0.0
    assert keys["hessian/lambda_min_lower"] <= ev[0] <= keys["hessian/lambda_min_bound"]
    assert keys["hessian/num_hvps"] == keys["hessian/num_hvps_bottom"] == 12
    assert keys["hessian/num_hvps_top"] <= 12 and keys["hessian/num_hvps_slq"] == 0
    assert {"lambda_min_bound", "lambda_min_resolved", "bottom_residuals"} <= set(s.arrays())


def test_bad_budgets_are_refused():
    matvec, mask, _, _ = blocks_case()
    with pytest.raises(ConfigError, match="bottom_iters must be at least max_iters") as err:
        lanczos(lambda v: v, 10, k=1, max_iters=8, bottom_iters=4)
    assert "Set bottom_iters to 8 or more" in str(err.value)
    with pytest.raises(ConfigError, match="k must be between 1 and the number of parameters") as err:
        lanczos_batched(matvec, mask, k=36)
    assert "smallest member has 35 active dimensions; ask for 1 to 35" in str(err.value)
    with pytest.raises(ConfigError, match="exceeds the number of parameters"):
        hessian_spectrum_batched(matvec, mask, k=40)
    with pytest.raises(ConfigError, match="bottom_iters must be at least lanczos_iters") as err:
        hessian_spectrum(lambda v: v, 10, k=1, lanczos_iters=8, bottom_iters=4)
    assert "Set bottom_iters to 8 or more, or None to use lanczos_iters." in str(err.value)
    with pytest.raises(ConfigError, match="one generator per member"):
        lanczos_batched(matvec, mask, k=1, generators=[torch.Generator()])
    with pytest.raises(ConfigError, match="bool"):
        lanczos_batched(matvec, mask.float(), k=1)

"""What a Lanczos run can honestly say about each end of a symmetric spectrum.

Three facts (exact arithmetic, orthonormal Krylov basis ``Q``) give the rules used here:

* **Residual bound.** Every Ritz pair ``(theta_i, y_i)`` has an eigenvalue within its residual
  ``r_i = |beta_m s_{m,i}|`` of ``theta_i``. That eigenvalue need not be the extreme one.
* **Interlacing.** Ritz values are Rayleigh quotients, so ``theta_1 >= lambda_min`` and
  ``theta_m <= lambda_max`` whatever the run did. A negative bottom Ritz value therefore
  *proves* a negative eigenvalue; a positive one proves nothing about ``lambda_min``.
* **Random start (Kuczynski & Wozniakowski 1992).** For a start drawn uniformly on
  the sphere of ``R^n`` and ``q`` products of Krylov information, Lanczos underestimates the
  largest eigenvalue of a positive semi-definite matrix by more than a factor ``1 - eps`` with
  probability at most ``1.648 sqrt(n) exp(-sqrt(eps) (2q - 1))``, whatever the spectrum (no gap
  enters). Applied to ``lambda_max I - H`` and ``H - lambda_min I`` with a union bound this
  gives a two-sided *probabilistic* bracket of the spectrum: :func:`gap_free_bounds`.

The operator itself is inexact (a float32 Hessian-vector product of a low-loss network can be
off by ``5e-5 lambda_max``, hundreds of roundings: measured on a 6,154-parameter MLP at a
loss of 5e-5). Lanczos measures this for free: with full
reorthogonalisation the first Gram-Schmidt coefficients ``q_i^T H q_j`` for ``i < j - 1`` must
vanish and ``q_{j-1}^T H q_j`` must equal ``beta_{j-1}``. Their deviations are the couplings that
the tridiagonal ``T`` drops; by Weyl's inequality the Ritz values of the symmetric part of the
evaluated operator on ``span(Q)`` differ from those of ``T`` by at most the spectral norm of the
symmetrised dropped part. That norm (plus a few roundings of ``T`` itself) is the run's
``noise``: every bound here is widened by it. A consistent symmetric error (for example the
float32 rounding of the weights) is invisible to any method and is not part of it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

CONFIDENCE = 0.99  # of the gap-free (random-start) bracket behind lambda_min_lower
ROUNDINGS = 10  # units of eps * max|theta| added to the measured noise for the rounding of T


def blas_threads() -> contextlib.AbstractContextManager:
    """A context that caps numpy's and scipy's BLAS / LAPACK pools at torch's thread count, so a
    probe's small dense eigenproblems do not fight torch for the cores; nothing without
    ``threadpoolctl`` (imported here, on first use)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=torch.get_num_threads())


def noise_level(couplings: np.ndarray, theta: np.ndarray, eps: float) -> float:
    """Spectral norm of the symmetrised dropped couplings (``(C + C^T) / 2``) plus
    ``ROUNDINGS * eps * max|theta|``.

    Args:
        couplings: ``(m, m)`` strictly upper-triangular matrix of the couplings dropped from ``T``.
        theta: Ritz values of ``T``.
        eps: machine epsilon of the Krylov basis dtype.
    """
    scale = float(np.abs(theta).max()) if theta.size else 0.0
    return spectral_norm((couplings + couplings.T) / 2) + ROUNDINGS * eps * scale


def spectral_norm(sym: np.ndarray) -> float:
    """``||sym||_2`` of a symmetric matrix: dense below 300 rows, else ARPACK to 0.1% (rounded
    up by that much), falling back to the Frobenius norm (an upper bound) if ARPACK stalls."""
    n = sym.shape[0]
    if n < 2 or not sym.any():
        return 0.0
    if n < 300:
        return float(np.abs(np.linalg.eigvalsh(sym)).max())
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh  # scipy only once a probe runs

    try:
        top = eigsh(sym, k=1, which="LM", tol=1e-3, return_eigenvectors=False)
        return float(np.abs(top).max()) * (1 + 1e-3)
    except ArpackNoConvergence:
        return float(np.linalg.norm(sym))


def end_passes(theta: np.ndarray, residuals: np.ndarray, tol: float, noise: float) -> np.ndarray:
    """Per Ritz pair: is its residual below ``tol * |theta_i|`` (its own scale) or below the
    operator ``noise`` (it cannot get better in this precision)?"""
    return residuals <= np.maximum(tol * np.abs(theta), noise)


def gap_free_bounds(theta_min: float, theta_max: float, dim: int, krylov_dim: int,
                    confidence: float) -> tuple[float, float]:
    """``(lower, upper)`` with ``lower <= lambda_min`` and ``upper >= lambda_max`` jointly with
    probability at least ``confidence`` over a uniformly random start.

    With ``q = krylov_dim - 1`` products of Krylov information (the last product of a run only
    gives ``beta_m``) and ``eps = (log(2 * 1.648 sqrt(dim) / (1 - confidence)) / (2q - 1))^2``,
    each end errs by more than ``eps (lambda_max - lambda_min)`` with probability at most
    ``(1 - confidence) / 2``. Eliminating the unknown spread
    ``lambda_max - lambda_min <= (theta_max - theta_min) / (1 - 2 eps)`` gives the bracket
    ``theta_min - d`` / ``theta_max + d`` with ``d = eps (theta_max - theta_min) / (1 - 2 eps)``.
    Returns ``(-inf, inf)`` when ``eps >= 1/2`` (too few steps for any statement).
    """
    q = krylov_dim - 1
    if q < 1:
        return -np.inf, np.inf
    eps = (np.log(2 * 1.648 * np.sqrt(dim) / (1 - confidence)) / (2 * q - 1)) ** 2
    if eps >= 0.5:
        return -np.inf, np.inf
    d = eps * (theta_max - theta_min) / (1 - 2 * eps)
    return theta_min - d, theta_max + d


@dataclass
class LanczosResult:
    """Output of :func:`~overparam_lit.curvature.lanczos` (one member of a batched run).

    Attributes:
        alpha, beta: diagonal (m) and off-diagonal (m - 1) of the tridiagonal ``T``.
        ritz_values: all ``m`` eigenvalues of ``T``, ascending.
        ritz_weights: squared first components of ``T``'s eigenvectors (quadrature weights
            of the start vector; they sum to one).
        ritz_residuals: ``|beta_m s_{m,i}|``, the residual norm of each Ritz pair.
        top: the k largest Ritz values, descending.
        bottom: the k smallest Ritz values, ascending (most negative first).
        num_matvecs: operator products spent.
        converged: whether the ends the run waited for (``which``) are converged.
        ritz_vectors: optional ``(dim, 2k)`` tensor (top then bottom) when requested; for a
            member of a batched run, over its active coordinates (row-major).
        top_residuals, bottom_residuals: the residuals of ``top`` and ``bottom`` (same order).
            Each Ritz value has an eigenvalue within ``residual + noise`` of it.
        top_passed, bottom_passed: per Ritz pair of ``top`` / ``bottom``: its residual is at
            most ``tol * |theta_i|`` (its own scale, not ``max|theta|``) or below ``noise``, or
            the Krylov space was exhausted. This is the usual Lanczos notion of accuracy: it
            assumes no eigenvalue beyond that end is still hidden from the Krylov space.
            ``top_converged`` / ``bottom_converged`` say all k pairs of that end passed,
            ``lambda_max_converged`` / ``lambda_min_converged`` the extreme pair.
        top_matvecs, bottom_matvecs: products after which that end passed its test for good
            (``num_matvecs`` when it never did): the cost of each end.
        noise: measured inexactness of the operator on the Krylov space (see module doc).
        exhausted: the Krylov space became invariant (or the whole space): exact Ritz values.
        random_start: the start was the default Gaussian draw (needed by the gap-free bracket).
        dim: dimension of the space.

    What the bottom end can say (``lambda_min`` properties): ``lambda_min <= lambda_min_bound =
    bottom[0] + noise`` always (interlacing), so a negative bound *proves* negative curvature.
    A positive sign is only claimed when :attr:`lambda_min_lower` ``> 0``: the gap-free bracket of a
    random start (probability :data:`CONFIDENCE`), or the exact values of an exhausted space.
    A residual test alone never resolves a positive sign: a cluster of eigenvalues can give a
    bottom Ritz pair a tiny residual while a lone eigenvalue below it is not yet in view.
    """

    alpha: np.ndarray
    beta: np.ndarray
    ritz_values: np.ndarray
    ritz_weights: np.ndarray
    ritz_residuals: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    num_matvecs: int
    converged: bool
    ritz_vectors: Tensor | None = field(default=None, repr=False)
    top_residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bottom_residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    top_passed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    bottom_passed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    top_matvecs: int = 0
    bottom_matvecs: int = 0
    noise: float = 0.0
    exhausted: bool = False
    random_start: bool = False
    dim: int = 0

    def gap_free_bounds(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """``(lower, upper)`` bracketing the whole spectrum with probability ``confidence``
        (exactly, up to ``noise``, when the space was exhausted; ``(-inf, inf)`` without a
        random start or with too few steps). See :func:`gap_free_bounds`."""
        lo, hi = float(self.ritz_values[0]) - self.noise, float(self.ritz_values[-1]) + self.noise
        if self.exhausted and (self.random_start or self.num_matvecs == self.dim):
            return lo, hi
        if not self.random_start:
            return -np.inf, np.inf
        return gap_free_bounds(lo, hi, self.dim, self.num_matvecs, confidence)

    @property
    def top_converged(self) -> bool:
        """All top-k Ritz pairs passed their own-scale residual test."""
        return bool(self.top_passed.all())

    @property
    def bottom_converged(self) -> bool:
        """All bottom-k Ritz pairs passed their own-scale residual test."""
        return bool(self.bottom_passed.all())

    @property
    def lambda_max_converged(self) -> bool:
        """The Ritz pair of ``top[0]`` passed its residual test."""
        return bool(self.top_passed[0])

    @property
    def lambda_min_converged(self) -> bool:
        """The Ritz pair of ``bottom[0]`` passed its residual test (value accurate to ``tol``;
        its sign is a separate question: :attr:`sign_resolved`)."""
        return bool(self.bottom_passed[0])

    @property
    def lambda_min_bound(self) -> float:
        """Upper bound on ``lambda_min``: ``bottom[0] + noise`` (interlacing; no assumption)."""
        return float(self.bottom[0]) + self.noise

    @property
    def lambda_min_lower(self) -> float:
        """Lower bound on ``lambda_min`` with probability :data:`CONFIDENCE` (random start)."""
        return self.gap_free_bounds()[0]

    @property
    def sign_resolved(self) -> bool:
        """Is the sign of ``lambda_min`` known: negative proven, or positive by the bracket?"""
        return self.lambda_min_bound < 0 or self.lambda_min_lower > 0

    @property
    def lambda_min(self) -> float:
        """``bottom[0]`` when its sign is resolved, else NaN."""
        return float(self.bottom[0]) if self.sign_resolved else float("nan")

"""Lanczos iteration with full reorthogonalisation for symmetric operators.

One run gives the largest and the most negative eigenvalues (Ritz values at both ends of
the tridiagonal matrix ``T``). The run stops when the Ritz residuals
``|beta_m * s_{m,i}|`` of the wanted top-k and bottom-k Ritz pairs all fall below
``tol * max|theta|``, when the Krylov space is exhausted, or after ``max_iters`` products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from overparam_lit.utils import check

MatVec = Callable[[Tensor], Tensor]


@dataclass
class LanczosResult:
    """Output of :func:`lanczos`.

    Attributes:
        alpha, beta: diagonal (m) and off-diagonal (m - 1) of the tridiagonal ``T``.
        ritz_values: all ``m`` eigenvalues of ``T``, ascending.
        ritz_weights: squared first components of ``T``'s eigenvectors (quadrature weights
            of the start vector; they sum to one).
        ritz_residuals: ``|beta_m s_{m,i}|``, the residual norm of each Ritz pair.
        top: the k largest Ritz values, descending.
        bottom: the k smallest Ritz values, ascending (most negative first).
        num_matvecs: operator products spent.
        converged: whether the wanted Ritz pairs met the tolerance.
        ritz_vectors: optional ``(dim, 2k)`` tensor (top then bottom) when requested.
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


def tridiagonal_eig(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal ``(alpha, beta)``."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.size == 1:
        return alpha.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta)


def rademacher(dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
    """A vector of independent +-1 entries drawn on the CPU from ``generator`` (reproducible
    across devices and ranks), then moved to ``device``."""
    z = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int8)
    return (2 * z - 1).to(dtype=dtype, device=device)


def lanczos(
    matvec: MatVec,
    dim: int,
    k: int = 5,
    max_iters: int = 100,
    tol: float = 1e-5,
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    min_iters: int | None = None,
    return_vectors: bool = False,
    which: str = "both",
) -> LanczosResult:
    """Lanczos with full reorthogonalisation (Gram-Schmidt applied twice).

    Args:
        matvec: symmetric operator on flat vectors of length ``dim``.
        dim: dimension of the space.
        k: number of eigenvalues wanted at each end (top-k and bottom-k).
        max_iters: most operator products (capped at ``dim``).
        tol: relative Ritz-residual tolerance, ``|beta_m s_mi| <= tol * max|theta|``;
            ``0`` runs all ``max_iters`` products.
        start: start vector (normalised here); default Gaussian from ``generator``.
        generator: CPU generator for the default start (same seed -> same start on every rank).
        dtype, device: of the Krylov basis.
        min_iters: products before the stop test is applied (default ``2k``).
        return_vectors: also return the Ritz vectors of the top-k and bottom-k values.
        which: Ritz pairs the stop test waits for: ``both`` ends, only ``top`` or ``bottom``.
    """
    check(which in ("both", "top", "bottom"), "unknown 'which'", which,
          "Use 'both', 'top' or 'bottom'.")
    check(dim >= 1, "Lanczos needs a space of dimension >= 1", dim, "Check the parameter subset.")
    check(1 <= k <= dim, "k must be between 1 and the number of parameters", k,
          f"The operator has {dim} dimensions; ask for at most {dim} eigenvalues.")
    check(max_iters >= 1, "max_iters must be >= 1", max_iters, "Allow at least one product.")
    m_max = min(int(max_iters), dim)
    min_iters = min(m_max, 2 * k if min_iters is None else int(min_iters))
    if start is None:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        start = torch.randn(dim, generator=gen, dtype=torch.float64)
    q = start.to(device=device, dtype=dtype).reshape(-1)
    check(q.numel() == dim, "the start vector has the wrong length", q.numel(),
          f"Pass a vector of length {dim}.")
    q = q / q.norm()
    Q = torch.empty(m_max, dim, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    converged = False
    theta = np.zeros(1)
    S = np.ones((1, 1))
    beta_last = 0.0
    breakdown = 100 * torch.finfo(dtype).eps
    for j in range(m_max):
        Q[j] = q
        w = matvec(q).to(dtype=dtype, device=device)
        a = float(torch.dot(w, q))
        alphas.append(a)
        basis = Q[: j + 1]
        for _ in range(2):  # full reorthogonalisation, twice for stability
            w = w - basis.T @ (basis @ w)
        b = float(w.norm())
        beta_last = b
        m = j + 1
        stop_test = m >= min_iters and tol > 0
        if stop_test or m == m_max:
            theta, S = tridiagonal_eig(np.array(alphas), np.array(betas))
            res = np.abs(b * S[-1, :])
            scale = max(np.abs(theta).max(), np.finfo(np.float64).tiny)
            kk = min(k, m)
            wanted = {"both": np.r_[res[:kk], res[-kk:]], "top": res[-kk:],
                      "bottom": res[:kk]}[which]
            if stop_test and m >= min(2 * k, m_max) and np.all(wanted <= tol * scale):
                converged = True
                break
        norm_scale = max(max(abs(x) for x in alphas), max(betas, default=0.0), 1e-300)
        if b <= breakdown * norm_scale:  # invariant subspace: the Ritz values are exact
            converged = True
            break
        if m == m_max:
            break
        betas.append(b)
        q = w / b
    m = len(alphas)
    if len(theta) != m:
        theta, S = tridiagonal_eig(np.array(alphas), np.array(betas[: m - 1]))
    res = np.abs(beta_last * S[-1, :])
    kk = min(k, m)
    if not converged and tol > 0:
        scale = max(np.abs(theta).max(), np.finfo(np.float64).tiny)
        converged = bool(np.all(np.r_[res[:kk], res[-kk:]] <= tol * scale))
    vectors = None
    if return_vectors:
        idx = np.r_[np.arange(m - 1, m - 1 - kk, -1), np.arange(kk)]
        Sk = torch.as_tensor(S[:, idx], dtype=dtype, device=device)
        vectors = Q[:m].T @ Sk
    return LanczosResult(
        alpha=np.array(alphas),
        beta=np.array(betas[: m - 1]),
        ritz_values=theta,
        ritz_weights=S[0, :] ** 2,
        ritz_residuals=res,
        top=theta[::-1][:kk].copy(),
        bottom=theta[:kk].copy(),
        num_matvecs=m,
        converged=converged,
        ritz_vectors=vectors,
    )

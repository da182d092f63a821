"""Lanczos iteration with full reorthogonalisation for symmetric operators, one or many at once.

One run gives the largest and the most negative eigenvalues (Ritz values at both ends of the
tridiagonal matrix ``T``). Each end has its own stop test against its own scale: the top-k
(bottom-k) Ritz pairs are converged when every residual ``|beta_m s_{m,i}|`` is at most
``tol * |theta_i|`` or below the operator noise that the run measures (see
:mod:`overparam_lit.curvature.ends`). The run stops when the ends it waits for are converged,
when the Krylov space is exhausted, or at its budget; the bottom end may have a larger budget of
its own (``bottom_iters``): the same Krylov space is extended only while the bottom end is
unconverged, which measured faster per product than restarts or polynomial filters (each of those
searches a subspace of the continued Krylov space).

:func:`lanczos_batched` runs ``M`` independent problems through one block-diagonal product per
step (the members of a stacked model); :func:`lanczos` is its ``M = 1`` case. The basis is stored
``(M, capacity, D)``, each member's ``(j, D)`` slice contiguous, and reorthogonalised member by member
(:func:`reorthogonalise`): a batched product over all members' bases streams ``M`` times one
member's basis through memory for each of its passes, which for a few members of a 2 x 256 MLP no
longer fits the cache; one member's basis does, so its later passes hit the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from overparam_lit.curvature.ends import LanczosResult, blas_threads, end_passes, noise_level
from overparam_lit.utils import check

MatVec = Callable[[Tensor], Tensor]
BatchedMatVec = Callable[[Tensor], Tensor]

__all__ = ["BatchedMatVec", "LanczosResult", "MatVec", "lanczos", "lanczos_batched",
           "rademacher", "reorthogonalise", "scatter_rows", "tridiagonal_eig"]


def tridiagonal_eig(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal ``(alpha, beta)``."""
    from scipy.linalg import eigh_tridiagonal  # scipy only once a probe runs

    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.size == 1:
        return alpha.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta)


def reorthogonalise(Q: Tensor, j: int, w: Tensor, members: Sequence[int]) -> Tensor:
    """Classical Gram-Schmidt applied twice against each listed member's basis ``Q[i, :j]``:
    ``w[i] -= Q[i, :j]^T (Q[i, :j] w[i])``, twice, in place, member by member in the order given
    (rows of members not listed are left alone). Returns the first pass's coefficients
    ``Q[i, :j] w[i]`` as ``(M, j)``, zero rows for members not listed.

    One member's ``(j, D)`` basis is read four times in a row, so where it fits the cache (31 MB at
    100 steps of a 2 x 256 MNIST-1D MLP) the last three reads hit the cache, where a batched
    product over all members streams every member's basis from memory four times. Measured
    on a 2-core CPU against a variant that fuses the middle two reads in cache-sized column blocks:
    no faster with one thread, far slower with two (many small parallel products).
    """
    coeffs = torch.zeros(Q.shape[0], j, dtype=Q.dtype, device=Q.device)
    for i in members:
        basis, v = Q[i, :j], w[i]
        first = torch.mv(basis, v)
        coeffs[i] = first
        v.addmv_(basis.T, first, alpha=-1)
        v.addmv_(basis.T, torch.mv(basis, v), alpha=-1)
    return coeffs


def rademacher(dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
    """A vector of independent +-1 entries drawn on the CPU from ``generator`` (reproducible
    across devices and ranks), then moved to ``device``."""
    z = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int8)
    return (2 * z - 1).to(dtype=dtype, device=device)


def scatter_rows(mask: Tensor, draw: Callable[[int, int], Tensor], dtype: torch.dtype,
                 device: torch.device | str) -> Tensor:
    """An ``(M, D)`` tensor whose row ``i`` holds ``draw(i, d_i)`` in member ``i``'s active
    coordinates (row-major order of ``mask[i]``) and zeros elsewhere."""
    out = torch.zeros(mask.shape, dtype=dtype)
    cpu_mask = mask.cpu()
    for i in range(mask.shape[0]):
        out[i, cpu_mask[i]] = draw(i, int(cpu_mask[i].sum())).to(dtype=dtype, device="cpu")
    return out.to(device)


class _Member:
    """Bookkeeping of one member's run: its tridiagonal, dropped couplings and end tests."""

    def __init__(self, dim: int, k: int, budget: int, bottom_budget: int, min_iters: int,
                 eps: float) -> None:
        self.dim, self.k, self.eps = dim, k, eps
        self.budget, self.bottom_budget, self.min_iters = budget, bottom_budget, min_iters
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.couplings = np.zeros((0, 0))  # grows with the run (a budget of d_i could be huge)
        self.beta_last = 0.0
        self.exhausted = self.done = False
        self.noise, self.noise_at = 0.0, 0
        self.since = {"top": 0, "bottom": 0}  # product count since which each end passes (0: not)

    def tests(self, beta: float, exact_noise: bool) -> dict:
        """Ritz values, eigenvectors and residuals of the current ``T``, and the noise level."""
        m = len(self.alphas)
        theta, S = tridiagonal_eig(np.array(self.alphas), np.array(self.betas[: m - 1]))
        res = np.abs(beta * S[-1, :])
        if exact_noise or m - self.noise_at >= max(1, m // 16):  # the norm only grows with m
            self.noise, self.noise_at = noise_level(self.couplings[:m, :m], theta, self.eps), m
        return {"theta": theta, "S": S, "res": res, "noise": self.noise}

    def verdicts(self, t: dict, tol: float) -> dict[str, np.ndarray]:
        """Which of the top-k (descending) and bottom-k (ascending) Ritz pairs pass."""
        kk = min(self.k, t["theta"].size)
        ok = self.exhausted | end_passes(t["theta"], t["res"], tol, t["noise"])
        return {"top": ok[::-1][:kk].copy(), "bottom": ok[:kk].copy()}

    def mark(self, ok: dict[str, np.ndarray]) -> None:
        m = len(self.alphas)
        for end, passed in ok.items():
            self.since[end] = (self.since[end] or m) if passed.all() else 0

    def advance(self, alpha: float, beta: float, coeffs: np.ndarray, tol: float, which: str) -> bool:
        """Record one step; return whether this member goes on."""
        self.alphas.append(alpha)
        self.beta_last = beta
        m = len(self.alphas)
        if m > self.couplings.shape[0]:
            grown = np.zeros((min(2 * m + 14, self.bottom_budget),) * 2)
            grown[: m - 1, : m - 1] = self.couplings[: m - 1, : m - 1]
            self.couplings = grown
        if m >= 2:  # what T drops of column m - 1 of Q^T H Q
            self.couplings[: m - 1, m - 1] = coeffs[: m - 1]
            self.couplings[m - 2, m - 1] -= self.betas[-1]
        scale = max(max(abs(a) for a in self.alphas), max(self.betas, default=0.0), 1e-300)
        if beta <= 100 * self.eps * scale or m == self.dim:  # invariant subspace: exact Ritz values
            self.exhausted = True
            return False
        if tol > 0 and m >= self.min_iters:
            ok = self.verdicts(self.tests(beta, exact_noise=False), tol)
            self.mark(ok)
            if (ok["top"].all() or which == "bottom") and (ok["bottom"].all() or which == "top"):
                return False
            if m >= self.budget and ok["bottom"][0]:  # past the main budget only lambda_min counts
                return False
        return m < self.bottom_budget

    def result(self, tol: float, which: str, basis: Tensor | None, active: Tensor,
               random_start: bool) -> LanczosResult:
        m = len(self.alphas)
        t = self.tests(self.beta_last, exact_noise=True)
        ok = self.verdicts(t, tol)
        self.mark(ok)
        theta, S, res = t["theta"], t["S"], t["res"]
        kk = min(self.k, m)
        converged = (ok["top"].all() or which == "bottom") and (ok["bottom"].all() or which == "top")
        vectors = None
        if basis is not None:
            idx = np.r_[np.arange(m - 1, m - 1 - kk, -1), np.arange(kk)]
            Sk = torch.as_tensor(S[:, idx], dtype=basis.dtype, device=basis.device)
            vectors = basis[:m][:, active].T @ Sk
        return LanczosResult(
            alpha=np.array(self.alphas), beta=np.array(self.betas[: m - 1]), ritz_values=theta,
            ritz_weights=S[0, :] ** 2, ritz_residuals=res, top=theta[::-1][:kk].copy(),
            bottom=theta[:kk].copy(), num_matvecs=m, converged=bool(converged),
            ritz_vectors=vectors, top_residuals=res[::-1][:kk].copy(),
            bottom_residuals=res[:kk].copy(), top_passed=ok["top"],
            bottom_passed=ok["bottom"], top_matvecs=self.since["top"] or m,
            bottom_matvecs=self.since["bottom"] or m, noise=t["noise"], exhausted=self.exhausted,
            random_start=random_start, dim=self.dim,
        )


def _lanczos_core(matvec: BatchedMatVec, mask: Tensor, starts: Tensor, random_start: bool, k: int,
                  max_iters: int, tol: float, which: str, min_iters: int | None,
                  bottom_iters: int | None, dtype: torch.dtype, device: torch.device | str,
                  return_vectors: bool) -> list[LanczosResult]:
    """The one Lanczos loop: ``M`` members, per-member dot products, stop tests and budgets (the
    stop tests' numpy / scipy eigenproblems with the BLAS pools capped at torch's threads)."""
    with blas_threads():
        return _lanczos_loop(matvec, mask, starts, random_start, k, max_iters, tol, which,
                             min_iters, bottom_iters, dtype, device, return_vectors)


def _lanczos_loop(matvec: BatchedMatVec, mask: Tensor, starts: Tensor, random_start: bool, k: int,
                  max_iters: int, tol: float, which: str, min_iters: int | None,
                  bottom_iters: int | None, dtype: torch.dtype, device: torch.device | str,
                  return_vectors: bool) -> list[LanczosResult]:
    M, D = mask.shape
    dims = [int(d) for d in mask.sum(dim=1).tolist()]
    eps = float(torch.finfo(dtype).eps)
    bottom_iters = max_iters if bottom_iters is None or which == "top" else bottom_iters
    members = []
    for d in dims:
        budget = min(max_iters, d)
        members.append(_Member(d, min(k, d), budget, min(bottom_iters, d),
                               min(budget, 2 * k if min_iters is None else int(min_iters)), eps))
    active = mask.to(device)
    q = torch.where(active, starts.to(device=device, dtype=dtype), 0)
    q = q / q.norm(dim=1, keepdim=True)
    capacity = max(m.budget for m in members)
    Q = torch.empty(M, capacity, D, dtype=dtype, device=device)  # rows are written before read
    alive = torch.ones(M, 1, dtype=torch.bool, device=device)
    order = list(range(M))
    for j in range(max(m.bottom_budget for m in members)):
        if j == Q.shape[1]:  # the bottom end asks for more than the main budget
            grow = min(2 * j, max(m.bottom_budget for m in members)) - j
            Q = torch.cat([Q, torch.empty(M, grow, D, dtype=dtype, device=device)], dim=1)
        Q[:, j] = q
        w = matvec(q)
        check(tuple(w.shape) == (M, D), "the operator returned the wrong shape", tuple(w.shape),
              f"Return one row per member, shape ({M}, {D}), like its input.")
        w = torch.where(active & alive, w.to(dtype=dtype, device=device), 0)
        alpha = (w * q).sum(dim=1)
        # members that are done have w = 0 and stay so; alternate the order so that the members
        # reorthogonalised last in one step, still in cache, come first in the next
        order.reverse()
        coeffs = reorthogonalise(Q, j + 1, w, [i for i in order if not members[i].done])
        beta = w.norm(dim=1)
        stats = torch.cat([alpha[:, None], beta[:, None], coeffs], dim=1).double().cpu().numpy()
        for i, mem in enumerate(members):
            if mem.done:
                continue
            if mem.advance(stats[i, 0], stats[i, 1], stats[i, 2:], tol, which):
                mem.betas.append(stats[i, 1])
            else:
                mem.done = True
                alive[i] = False
        if not alive.any():
            break
        q = torch.where(alive, w / torch.where(alive[:, 0], beta, 1.0)[:, None], 0)
    return [mem.result(tol, which, Q[i] if return_vectors else None, active[i], random_start)
            for i, mem in enumerate(members)]


def _check_common(dims: list[int], k: int, max_iters: int, which: str, bottom_iters: int | None,
                  single: bool) -> None:
    check(which in ("both", "top", "bottom"), "unknown 'which'", which,
          "Use 'both', 'top' or 'bottom'.")
    check(min(dims) >= 1, "Lanczos needs a space of dimension >= 1", min(dims),
          "Check the parameter subset (every member needs at least one active coordinate).")
    space = f"The operator has {dims[0]} dimensions" if single else \
        f"The smallest member has {min(dims)} active dimensions"
    check(1 <= k <= min(dims), "k must be between 1 and the number of parameters", k,
          f"{space}; ask for 1 to {min(dims)} eigenvalues per end.")
    check(max_iters >= 1, "max_iters must be >= 1", max_iters, "Allow at least one product.")
    check(bottom_iters is None or bottom_iters >= max_iters, "bottom_iters must be at least max_iters",
          bottom_iters, f"Set bottom_iters to {max_iters} or more, or None to use max_iters.")


def lanczos_batched(
    matvec: BatchedMatVec,
    mask: Tensor,
    k: int = 5,
    max_iters: int = 100,
    tol: float = 1e-5,
    generators: Sequence[torch.Generator] | None = None,
    starts: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    which: str = "both",
    bottom_iters: int | None = None,
    min_iters: int | None = None,
    return_vectors: bool = False,
) -> list[LanczosResult]:
    """Lanczos on ``M`` independent symmetric operators sharing one block-diagonal product.

    Args:
        matvec: maps ``(M, D)`` to ``(M, D)``; row ``i`` of the output depends only on row ``i``
            of the input (the product of the summed member losses' Hessian). Rows of members
            that are done are passed as zeros; inactive coordinates of the output are zeroed here.
        mask: bool ``(M, D)``, member ``i``'s active coordinates (its space has dimension
            ``d_i = mask[i].sum()``).
        k, max_iters, tol, min_iters, which, bottom_iters: as in :func:`lanczos`, per member
            (``max_iters`` and ``bottom_iters`` are capped at each ``d_i``).
        generators: one CPU generator per member for the default starts. Member ``i``'s start is
            ``torch.randn(d_i, generator=generators[i], dtype=float64)``, exactly the default
            start of :func:`lanczos` on a ``d_i``-dimensional problem, scattered into its active
            coordinates in row-major order; so a member starts where a single-model probe with
            the same seed starts. Default: ``torch.Generator().manual_seed(0)`` per member.
        starts: ``(M, D)`` start vectors instead (inactive coordinates ignored).
        dtype, device: of the Krylov basis ``(M, bottom_iters, D)``.
        return_vectors: Ritz vectors as ``(d_i, 2k)`` over member ``i``'s active coordinates.

    Returns one :class:`LanczosResult` per member, equal (to float rounding) to :func:`lanczos` on
    that member's operator restricted to its active coordinates from the same start. Members stop
    contributing once done; the loop ends when all are done, so it costs ``max_i num_matvecs``
    batched products.
    """
    check(mask.dim() == 2 and mask.dtype == torch.bool, "mask must be a bool (M, D) tensor",
          (tuple(mask.shape), mask.dtype), "Pass mask[i, j] = True for member i's active coordinates.")
    dims = [int(d) for d in mask.sum(dim=1).tolist()]
    _check_common(dims, k, max_iters, which, bottom_iters, single=False)
    random_start = starts is None
    if random_start:
        check(generators is None or len(generators) == len(dims), "one generator per member needed",
              None if generators is None else len(generators), f"Pass {len(dims)} generators.")
        gens = list(generators) if generators is not None else \
            [torch.Generator().manual_seed(0) for _ in dims]
        starts = scatter_rows(mask, lambda i, d: torch.randn(d, generator=gens[i], dtype=torch.float64),
                              torch.float64, device)
    check(tuple(starts.shape) == tuple(mask.shape), "the start vectors have the wrong shape",
          tuple(starts.shape), f"Pass an (M, D) = {tuple(mask.shape)} tensor.")
    return _lanczos_core(matvec, mask, starts, random_start, k, max_iters,
                         tol, which, min_iters, bottom_iters, dtype, device, return_vectors)


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
    bottom_iters: int | None = None,
) -> LanczosResult:
    """Lanczos with full reorthogonalisation (Gram-Schmidt applied twice).

    Args:
        matvec: symmetric operator on flat vectors of length ``dim``.
        dim: dimension of the space.
        k: number of eigenvalues wanted at each end (top-k and bottom-k).
        max_iters: most operator products (capped at ``dim``).
        tol: relative Ritz-residual tolerance of each end against its own scale,
            ``|beta_m s_mi| <= tol * |theta_i|`` (or below the measured operator noise);
            ``0`` runs all ``max_iters`` products.
        start: start vector (normalised here); default Gaussian from ``generator``.
        generator: CPU generator for the default start (same seed -> same start on every rank).
        dtype, device: of the Krylov basis.
        min_iters: products before the stop test is applied (default ``2k``).
        return_vectors: also return the Ritz vectors of the top-k and bottom-k values.
        which: Ritz pairs the stop test waits for: ``both`` ends, only ``top`` or ``bottom``.
        bottom_iters: the bottom end's own budget: after ``max_iters`` products the same Krylov
            space is extended while the Ritz pair of ``lambda_min`` (``bottom[0]``) is
            unconverged, up to ``bottom_iters`` products in all (default ``max_iters``; ignored
            for ``which='top'``).

    See :class:`LanczosResult` for what the result can and cannot say about each end.
    """
    check(dim >= 1, "Lanczos needs a space of dimension >= 1", dim, "Check the parameter subset.")
    starts = None
    if start is not None:
        check(start.numel() == dim, "the start vector has the wrong length", start.numel(),
              f"Pass a vector of length {dim}.")
        starts = start.reshape(1, -1)
    mask = torch.ones(1, dim, dtype=torch.bool)
    _check_common([dim], k, max_iters, which, bottom_iters, single=True)
    gens = [generator if generator is not None else torch.Generator().manual_seed(0)]
    if starts is None:
        starts = torch.randn(1, dim, generator=gens[0], dtype=torch.float64)
    return _lanczos_core(lambda x: matvec(x[0]).reshape(1, -1), mask, starts, start is None, k,
                         max_iters, tol, which, min_iters, bottom_iters, dtype, device,
                         return_vectors)[0]

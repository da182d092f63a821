"""Tolerances for comparing two computations that are equal in exact arithmetic but add their terms
in another order (stacked vs single members, DDP vs one process, vmap vs loop, Lanczos vs dense).

The order of a reduction depends on the CPU's kernels (AVX2 or AVX-512, MKL's code path on Intel or
AMD) and on the thread count, so such a comparison must allow the rounding of the computation, and
no more: a sum of ``n`` terms of size ``scale`` rounds by about ``eps * sqrt(n) * scale`` (worst case
``eps * n * scale``). Things that are bit-identical by construction (same kernels on the same data in
the same order: a resume equals the uninterrupted run, masks, exact zeros) are compared exactly.
"""

from __future__ import annotations

import math

import torch


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype (2.2e-16 for float64, 1.2e-7 for float32)."""
    return torch.finfo(dtype).eps


def tol(dtype: torch.dtype, n_terms: int = 1, scale: float = 1.0, c: float = 10.0) -> float:
    """``c * eps(dtype) * sqrt(n_terms) * scale``: the rounding of a sum of ``n_terms`` terms of size
    ``scale`` in an unknown order; ``c`` covers the constant of the random-walk bound."""
    return c * eps(dtype) * math.sqrt(max(int(n_terms), 1)) * scale


def adam_zero_grad_tol(dtype: torch.dtype, n_terms: int, steps: int, lr: float = 1e-3,
                       adam_eps: float = 1e-8, grad_scale: float = 1.0, c: float = 10.0) -> float:
    """Drift of a parameter whose gradient is zero in exact arithmetic (a conv bias before BatchNorm,
    which subtracts the batch mean), trained by Adam.

    Its computed gradient is only the rounding residue of a cancelling sum of ``n_terms`` terms
    (at most ``tol(dtype, n_terms, grad_scale, c)``). While that residue is far below ``adam_eps``,
    Adam's step ``lr * m / (sqrt(v) + adam_eps)`` is linear in it with gain ``lr / adam_eps``
    (1e5 at the defaults), and two runs that round differently drift apart by at most ``steps``
    such steps. The same gain bounds how much any parameter's Adam step can move with a rounding
    change of its gradient (the derivative of ``g / (|g| + adam_eps)`` is at most ``1 / adam_eps``),
    so this bounds the drift of every parameter over a few steps.
    """
    return steps * (lr / adam_eps) * tol(dtype, n_terms, grad_scale, c)

"""One Hessian probe of a network on a fixed probe set: a single model or every member of a stack.

:func:`probe_spectra` builds the operator (the summed member losses of a stack are one
block-diagonal operator, :class:`~overparam_lit.curvature.members.MemberHessian`) and runs
:func:`~overparam_lit.curvature.spectrum.hessian_spectrum_batched`, so a stack's ``M`` spectra
cost the products of one. Member ``i``'s summary equals the single-model probe of member ``i``'s
own network with the same seed (same start vectors, same operator).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from overparam_lit.curvature.hvp import HessianOperator, layer_subsets
from overparam_lit.curvature.lanczos import lanczos_batched
from overparam_lit.curvature.members import MemberHessian
from overparam_lit.curvature.spectrum import SpectrumSummary, hessian_spectrum_batched
from overparam_lit.utils import check

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ProbeOptions:
    """What a probe computes (see :class:`overparam_lit.callbacks.hessian.HessianProbe`)."""

    k: int = 5
    lanczos_iters: int = 100
    tol: float = 1e-4
    slq_runs: int = 10
    slq_iters: int = 80
    negative_eps: float = 1e-2
    seed: int = 0
    chunk_size: int | None = 1000
    method: str = "auto"
    dtype: torch.dtype = torch.float32
    bottom_iters: int | None = None


def _operator(net: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, names: Sequence[str],
              masks: Mapping[str, Tensor], members: int | None, opts: ProbeOptions, distributed: bool,
              buffers: Mapping[str, Tensor] | None) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """A batched matvec ``(M, D) -> (M, D)`` and the active-coordinate mask ``(M, D)``."""
    if members is None:
        op = HessianOperator(net, loss_fn, x, y, params=list(names), masks=dict(masks),
                             chunk_size=opts.chunk_size, method=opts.method, dtype=opts.dtype,
                             distributed=distributed, buffers=buffers)
        mask = torch.ones(1, op.dim, dtype=torch.bool, device=op.device)
        return (lambda v: op.matvec(v[0]).unsqueeze(0)), mask
    op = HessianOperator(net, loss_fn, x, y, params=list(names), masks=None,
                         chunk_size=opts.chunk_size, method=opts.method, dtype=opts.dtype,
                         distributed=distributed, buffers=buffers)
    mh = MemberHessian(op, members, masks={n: m for n, m in masks.items() if n in names})
    return mh.matvec, mh.mask


def probe_spectra(net: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, names: Sequence[str],
                  masks: Mapping[str, Tensor], members: int | None, opts: ProbeOptions,
                  distributed: bool = False, buffers: Mapping[str, Tensor] | None = None
                  ) -> list[SpectrumSummary]:
    """Spectrum summaries of the Hessian of ``loss_fn`` on ``(x, y)``: one for a single model
    (``members=None``), else one per member (``loss_fn`` is then the *sum* of the members' mean
    losses and ``masks`` hold each member's kept entries with a leading member axis)."""
    matvec, mask = _operator(net, loss_fn, x, y, names, masks, members, opts, distributed, buffers)
    dims = [int(d) for d in mask.sum(1)]
    check(opts.k <= min(dims), "k (eigenvalues per end) exceeds the number of parameters", opts.k,
          f"The Hessian subset has {min(dims)} parameters; set k <= {min(dims)}.")
    return hessian_spectrum_batched(
        matvec, mask, k=opts.k, lanczos_iters=opts.lanczos_iters, tol=opts.tol, slq_runs=opts.slq_runs,
        slq_iters=opts.slq_iters, negative_eps=opts.negative_eps, seed=opts.seed, dtype=opts.dtype,
        device=mask.device, bottom_iters=opts.bottom_iters)


def layer_lambda_max(net: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, names: Sequence[str],
                     masks: Mapping[str, Tensor], members: int | None, opts: ProbeOptions,
                     distributed: bool = False, buffers: Mapping[str, Tensor] | None = None
                     ) -> dict[str, list[float]]:
    """The largest eigenvalue of each layer's diagonal Hessian block (per member)."""
    out = {}
    for layer, group in layer_subsets(net).items():
        group = [n for n in group if n in names]
        if not group:
            continue
        matvec, mask = _operator(net, loss_fn, x, y, group, masks, members, opts, distributed, buffers)
        gens = [torch.Generator().manual_seed(opts.seed) for _ in range(mask.shape[0])]
        res = lanczos_batched(matvec, mask, k=1, max_iters=opts.lanczos_iters, tol=opts.tol,
                              generators=gens, dtype=opts.dtype, device=mask.device, which="top")
        out[layer or "root"] = [float(r.top[0]) for r in res]
    return out


def member_means(summaries: Sequence[SpectrumSummary]) -> dict[str, float]:
    """The logged scalars: a single model's own, or means over members (NaN entries, such as an
    unresolved ``lambda_min``, are left out of the mean; flags become resolved fractions)."""
    if len(summaries) == 1:
        return summaries[0].scalars()
    rows = [s.scalars() for s in summaries]
    out = {}
    for key in rows[0]:
        vals = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        out[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def stacked_arrays(summaries: Sequence[SpectrumSummary]) -> dict[str, np.ndarray]:
    """Every member's arrays with a leading member axis (ragged arrays padded with NaN)."""
    per = [s.arrays() for s in summaries]
    out = {}
    for key in per[0]:
        arrs = [np.asarray(p[key]) for p in per]
        shape = tuple(max(a.shape[d] for a in arrs) for d in range(arrs[0].ndim))
        if all(a.shape == shape for a in arrs):
            out[key] = np.stack(arrs)
            continue
        padded = np.full((len(arrs), *shape), np.nan)
        for i, a in enumerate(arrs):
            padded[(i, *tuple(slice(0, s) for s in a.shape))] = a
        out[key] = padded
    return out

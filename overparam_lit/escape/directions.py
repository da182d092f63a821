"""Small steps off an exact critical point of a widened network (no Lightning).

:func:`split_direction` separates each duplicated unit from its copy (the splitting direction of
Fukumizu & Amari 2000), :func:`random_direction` is a Gaussian direction over every parameter, and
:func:`nudge_` moves a network a given distance along a direction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from overparam_lit.escape.hidden import hidden_layers
from overparam_lit.utils import check

if TYPE_CHECKING:
    from overparam_lit.escape.surgery import Widened


def split_direction(widened: Widened, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A direction that separates each duplicated unit from its copy, ``{parameter name: tensor}``.

    For a split pair (unit ``j``, copy ``c``) with final outgoing shares ``s_j`` and ``s_c``, the
    incoming weights and bias move by ``s_c * u`` (unit ``j``) and ``-s_j * u`` (copy ``c``), with
    ``u ~ N(0, I)`` drawn per pair: the network's outputs do not change to first order, and the
    loss changes at second order by the splitting curvature (Fukumizu & Amari 2000), which is
    negative along some ``u`` at a critical point that widening turned into a saddle. Every other
    entry is zero.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    seq = widened.net
    out = {n: torch.zeros_like(p) for n, p in seq.named_parameters()}
    for h, src, share, size in zip(hidden_layers(seq), widened.sources, widened.shares, widened.sizes_before,
                                   strict=True):
        prod = seq[h.producer]
        w_name, b_name = f"{h.producer}.weight", f"{h.producer}.bias"
        for k, j in enumerate(src):
            c = size + k
            u = torch.randn(prod.weight.shape[1:], generator=gen, dtype=torch.float64).to(prod.weight)
            s_c = share[c]
            out[w_name][j] += s_c * u
            out[w_name][c] -= share[j] * u
            if prod.bias is not None:
                ub = torch.randn((), generator=gen, dtype=torch.float64).to(prod.bias)
                out[b_name][j] += s_c * ub
                out[b_name][c] -= share[j] * ub
    return out


def random_direction(net: nn.Module, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A Gaussian direction ``N(0, I)`` over every trainable parameter, ``{name: tensor}``."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
            for n, p in net.named_parameters() if p.requires_grad}


@torch.no_grad()
def nudge_(net: nn.Module, direction: dict[str, Tensor], size: float) -> float:
    """Move ``net``'s parameters (in place) by ``size`` along ``direction`` (normalised to unit L2
    norm over all its entries); returns the direction's norm before normalising (0: no move)."""
    params = dict(net.named_parameters())
    unknown = sorted(set(direction) - set(params))
    check(not unknown, "the nudge direction names parameters the network does not have", unknown[:4],
          f"Key the direction by the network's parameter names, e.g. {list(params)[:3]}.")
    for n, d in direction.items():
        check(tuple(d.shape) == tuple(params[n].shape), f"the nudge direction of {n!r} has the wrong shape",
              (tuple(d.shape), tuple(params[n].shape)), "Give a tensor of the (widened) parameter's shape.")
    norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values())))
    if norm == 0.0 or size == 0.0:
        return norm
    for n, d in direction.items():
        params[n].add_(d.to(params[n]) * (float(size) / norm))
    return norm

"""Pruning a stack of members: every member by its own magnitudes, counted over its own entries.

Masks of a stacked model have the parameters' leading member axis ``M``. ``base`` masks (the
structural masks of padded members, ``None`` for a stack of equal widths) say which entries a
member owns: they are the starting masks, and densities count only them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from overparam_lit.pruning.masks import Scope, magnitude_prune, sparsity_report


def member(tensors: Mapping[str, Tensor], i: int) -> dict[str, Tensor]:
    """Member ``i``'s slice of stacked tensors."""
    return {n: t[i] for n, t in tensors.items()}


def initial_masks(weights: Mapping[str, Tensor], base: Mapping[str, Tensor] | None = None,
                  stacked: bool = False) -> dict[str, Tensor]:
    """Density-1 masks: all ``True``, or a stack's structural masks where it has them."""
    out = {}
    for n, w in weights.items():
        if stacked and base is not None and n in base:
            out[n] = base[n].to(torch.bool).clone()
        else:
            out[n] = torch.ones_like(w, dtype=torch.bool)
    return out


def own_counts(masks: Mapping[str, Tensor], base: Mapping[str, Tensor] | None, i: int | None
               ) -> dict[str, int]:
    """Entries each layer owns: the structural count of member ``i``, else the layer's size."""
    out = {}
    for n, m in masks.items():
        if i is None:
            out[n] = m.numel()
        elif base is not None and n in base:
            out[n] = int(base[n][i].sum())
        else:
            out[n] = m[i].numel()
    return out


def prune_members(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    density: float,
    scope: Scope = "global",
    own_density: Mapping[str, float] | None = None,
    base: Mapping[str, Tensor] | None = None,
    num_members: int | None = None,
    pools: Mapping[str, str] | None = None,
) -> dict[str, Tensor]:
    """Magnitude pruning of every member on its own (``num_members=None``: one single model).

    Member ``i`` keeps the largest-magnitude survivors of its own weights, ``density`` of its own
    entries (globally across its layers, or per layer), exactly as :func:`magnitude_prune` prunes
    the single model that member ``i`` is. ``pools`` names tensors pruned together
    (:func:`~overparam_lit.pruning.masks.magnitude_prune`).
    """
    if num_members is None:
        return magnitude_prune(weights, masks, density, scope, own_density, pools=pools)
    parts = []
    for i in range(num_members):
        parts.append(magnitude_prune(member(weights, i), member(masks, i), density, scope, own_density,
                                     numel=own_counts(masks, base, i), pools=pools))
    return {n: torch.stack([p[n] for p in parts]) for n in weights}


def member_reports(masks: Mapping[str, Tensor], base: Mapping[str, Tensor] | None,
                   num_members: int | None) -> list[dict]:
    """:func:`sparsity_report` of every member (one report for a single model)."""
    if num_members is None:
        return [sparsity_report(masks)]
    return [sparsity_report(member(masks, i), own_counts(masks, base, i)) for i in range(num_members)]

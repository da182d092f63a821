"""Unstructured masks: magnitude pruning (global or layerwise), random masks, sparsity reports.

Masks are ``dict[name, bool Tensor]`` keyed by parameter name; ``True`` keeps a weight. They
never rename ``state_dict`` keys: a masked model is the plain model with zeros in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor

Scope = Literal["global", "layerwise"]
SCOPES = ("global", "layerwise")


def full_masks(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """All-``True`` masks (density 1) shaped like ``weights``."""
    return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}


def kept_count(numel: int, density: float) -> int:
    """Number of entries kept out of ``numel`` at ``density`` (rounded to nearest)."""
    return int(min(numel, max(0, round(numel * float(density)))))


def _keep_largest(scores: Tensor, alive: Tensor, keep: int) -> Tensor:
    """Bool mask (flat) keeping the ``keep`` highest scores among ``alive`` entries.

    Ties are broken by position (stable sort), so the result is deterministic.
    """
    keep = min(int(keep), int(alive.sum()))
    masked = torch.where(alive, scores.float(), torch.full_like(scores, -torch.inf, dtype=torch.float))
    order = torch.argsort(masked, descending=True, stable=True)
    out = torch.zeros_like(alive)
    out[order[:keep]] = True
    return out


def magnitude_prune(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    density: float,
    scope: Scope = "global",
    own_density: Mapping[str, float] | None = None,
    numel: Mapping[str, int] | None = None,
    pools: Mapping[str, str] | None = None,
) -> dict[str, Tensor]:
    """New masks that keep the largest-magnitude surviving weights.

    ``density`` is the target fraction of the *original* entries kept: in each layer
    (``layerwise``) or in the pool of all layers together (``global``). Layers listed in
    ``own_density`` (e.g. the output layer) are pruned layerwise to their own density and are
    left out of the global pool. Only surviving entries can be kept, so a new mask is always a
    subset of the old one. Counts are ``round(numel * density)``; over IMP levels call this with
    ``density = (1 - fraction) ** level`` so rounding never accumulates.

    Args:
        weights: current weights (pruned entries already zero or not: the masks decide).
        masks: current masks, same names and shapes.
        density: target density in [0, 1].
        scope: ``global`` or ``layerwise``.
        own_density: per-layer target densities for layers pruned at their own rate.
        numel: per-layer counts of the *original* entries (default: the tensors' sizes); a
            padded member of a stack counts only its own entries.
        pools: tensors pruned together, by a pool name per tensor (e.g. a layer's weight and bias
            under the layer's name): one threshold over the pool's entries wherever the tensor
            alone would have its own (``layerwise`` and ``own_density``, which must then be equal
            within a pool). Default: every tensor is its own pool.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {SCOPES}")
    own = dict(own_density or {})
    size = {n: int(numel[n]) if numel is not None else masks[n].numel() for n in weights}
    rest = [n for n in weights if n not in own]
    targets = [([n], own[n]) for n in own if n in weights]
    if scope == "layerwise":
        targets += [([n], density) for n in rest]
    elif rest:
        targets.append((rest, density))  # one global pool, never split
    new: dict[str, Tensor] = {}
    for names, dens in _pooled(targets, pools, scope == "global"):
        flat = _keep_largest(torch.cat([weights[n].detach().abs().flatten().float() for n in names]),
                             torch.cat([masks[n].flatten() for n in names]),
                             kept_count(sum(size[n] for n in names), dens))
        start = 0
        for n in names:
            new[n] = flat[start : start + masks[n].numel()].view_as(masks[n])
            start += masks[n].numel()
    return {n: new[n] for n in weights}


def _pooled(targets: list[tuple[list[str], float]], pools: Mapping[str, str] | None, glob: bool
            ) -> list[tuple[list[str], float]]:
    """Merge the single-tensor ``targets`` that share a pool name (the global pool stays whole)."""
    if not pools:
        return targets
    merged: dict[str, tuple[list[str], float]] = {}
    out: list[tuple[list[str], float]] = []
    for names, dens in targets:
        if len(names) > 1 or names[0] not in pools:
            out.append((names, dens))
            continue
        key = pools[names[0]]
        if key in merged:
            if merged[key][1] != dens:
                raise ValueError(f"pool {key!r} mixes densities {merged[key][1]} and {dens}; "
                                 "give every tensor of a pool the same own density")
            merged[key][0].append(names[0])
        else:
            merged[key] = ([names[0]], dens)
            out.append(merged[key])
    return out


def pool_lists(names: Iterable[str], pools: Mapping[str, str] | None) -> list[list[str]]:
    """``names`` grouped by pool name, in first-seen order (a tensor without one is its own pool)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault((pools or {}).get(n, "\0" + n), []).append(n)
    return list(groups.values())


def random_pool_masks(masks: Mapping[str, Tensor], pools: Iterable[Iterable[str]], generator: torch.Generator,
                      within: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Random pruning: in every pool (a list of tensor names), as many entries kept as ``masks``
    keep there, at positions drawn uniformly over the whole pool (among the ``within`` entries of
    each tensor when given). A tensor in no pool is a pool of its own."""
    listed = [[n for n in pool if n in masks] for pool in pools]
    seen = {n for pool in listed for n in pool}
    listed = [p for p in listed if p] + [[n] for n in masks if n not in seen]
    out = {}
    for names in listed:
        keep = sum(int(masks[n].sum()) for n in names)
        allowed = torch.cat([(torch.ones_like(masks[n]) if within is None or n not in within
                              else within[n].to(masks[n].device)).flatten().bool() for n in names])
        pool = allowed.nonzero().flatten()
        kept = min(keep, pool.numel())
        idx = pool[torch.randperm(pool.numel(), generator=generator)[:kept].to(pool.device)]
        flat = torch.zeros(allowed.numel(), dtype=torch.bool, device=allowed.device)
        flat[idx] = True
        start = 0
        for n in names:
            out[n] = flat[start : start + masks[n].numel()].view_as(masks[n])
            start += masks[n].numel()
    return {n: out[n] for n in masks}


def prune_remaining(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    fraction: float,
    scope: Scope = "global",
) -> dict[str, Tensor]:
    """Prune ``fraction`` of the *remaining* weights by magnitude (one IMP step).

    Layerwise: each layer keeps ``round((1 - fraction) * alive_l)``; global: the pool keeps
    ``round((1 - fraction) * alive)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    alive = {n: int(m.sum()) for n, m in masks.items()}
    numel = {n: m.numel() for n, m in masks.items()}
    if scope == "layerwise":
        own = {n: round((1 - fraction) * alive[n]) / max(numel[n], 1) for n in masks}
        return magnitude_prune(weights, masks, 1.0, "global", own_density=own)
    total_alive, total = sum(alive.values()), sum(numel.values())
    return magnitude_prune(weights, masks, round((1 - fraction) * total_alive) / max(total, 1), scope)


def random_masks_like(masks: Mapping[str, Tensor], generator: torch.Generator,
                      within: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Random masks with exactly the same number of kept entries per layer (random positions),
    drawn among the ``within`` entries of each layer when given (a padded member's own entries)."""
    out = {}
    for name, m in masks.items():
        keep = int(m.sum())
        allowed = (torch.ones_like(m) if within is None else within[name].to(m.device)).flatten()
        pool = allowed.nonzero().flatten()
        idx = pool[torch.randperm(pool.numel(), generator=generator)[:keep].to(m.device)]
        flat = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
        flat[idx] = True
        out[name] = flat.view_as(m)
    return out


def density(masks: Mapping[str, Tensor]) -> float:
    """Fraction of entries kept over all masks together."""
    total = sum(m.numel() for m in masks.values())
    return float(sum(int(m.sum()) for m in masks.values())) / max(total, 1)


def sparsity_report(masks: Mapping[str, Tensor], numel: Mapping[str, int] | None = None) -> dict:
    """Per-layer and total counts: ``{"layers": {name: {...}}, "total": {...}}`` (JSON-ready).

    ``numel`` gives the original entries of each layer (default: the mask's size)."""
    layers = {}
    for name, m in masks.items():
        kept = int(m.sum())
        size = int(numel[name]) if numel is not None else m.numel()
        layers[name] = {
            "shape": list(m.shape),
            "numel": size,
            "kept": kept,
            "density": kept / max(size, 1),
            "sparsity": 1 - kept / max(size, 1),
        }
    total_numel = sum(v["numel"] for v in layers.values())
    kept = sum(v["kept"] for v in layers.values())
    total = {"numel": total_numel, "kept": kept, "density": kept / max(total_numel, 1)}
    total["sparsity"] = 1 - total["density"]
    return {"layers": layers, "total": total}


@torch.no_grad()
def apply_masks_(params: Iterable[Tensor], masks: Iterable[Tensor]) -> None:
    """Zero masked entries in place (``masks`` as float or bool tensors aligned with ``params``)."""
    params = list(params)
    masks = [m if m.dtype != torch.bool else m.to(p.dtype) for p, m in zip(params, masks, strict=True)]
    if params:
        torch._foreach_mul_(params, masks)


@torch.no_grad()
def mask_grads_(params: Iterable[Tensor], masks: Iterable[Tensor]) -> None:
    """Zero the gradients of masked entries in place (parameters without a gradient are skipped)."""
    pairs = [(p.grad, m) for p, m in zip(params, masks, strict=True) if p.grad is not None]
    if pairs:
        torch._foreach_mul_([g for g, _ in pairs], [m.to(g.dtype) for g, m in pairs])


@torch.no_grad()
def mask_optimizer_state_(optimizer: torch.optim.Optimizer, params: Iterable[Tensor],
                          masks: Iterable[Tensor]) -> None:
    """Zero the optimizer's per-entry state (momentum, Adam moments) at masked entries."""
    for p, m in zip(params, masks, strict=True):
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.shape == p.shape:
                value.mul_(m.to(value.dtype))

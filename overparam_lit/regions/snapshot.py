"""The numbers of one decision-region snapshot, for a single model or a stack of members."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from overparam_lit.regions.maps import LabelMaps
from overparam_lit.regions.metrics import (
    agreement,
    anchor_consistency,
    boundary_fraction,
    cohen_kappa,
    fragmentation,
)
from overparam_lit.regions.planes import PlaneBank


@dataclass
class Snapshot:
    """One snapshot's metrics.

    Attributes:
        metrics: the logged ``regions/*`` scalars (means over members for a stack).
        members: every member's own metrics (``None`` for a single model).
        arrays: arrays for the snapshot's ``.npz`` (region counts, the member agreement matrix).
    """

    metrics: dict[str, float]
    members: list[dict[str, float]] | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _one(pred: np.ndarray, anchor_pred: np.ndarray, bank: PlaneBank, num_classes: int,
         min_region_size: int, prev: np.ndarray | None) -> tuple[dict[str, float], np.ndarray]:
    frag = fragmentation(pred, num_classes, min_region_size)
    out = {"regions/fragmentation": frag.mean_normalised, "regions/fragmentation_raw": frag.mean_raw,
           "regions/boundary_fraction": boundary_fraction(pred)}
    for c, v in enumerate(frag.per_class):
        if np.isfinite(v):
            out[f"regions/fragmentation_per_class/{c}"] = float(v)
    if anchor_pred.size:
        out["regions/anchor_consistency"] = anchor_consistency(anchor_pred, bank.anchor_y.numpy())
        out["regions/anchor_consistency_true"] = anchor_consistency(anchor_pred, bank.anchor_y_true.numpy())
    if prev is not None and prev.shape == pred.shape:
        out["regions/agreement"] = agreement(prev, pred)
        out["regions/kappa"] = cohen_kappa(prev, pred, num_classes)
    return out, frag.counts


def measure(maps: LabelMaps, bank: PlaneBank, num_classes: int, min_region_size: int = 1,
            prev_pred: np.ndarray | None = None, groups: Sequence[Any] | None = None) -> Snapshot:
    """Fragmentation, boundary fraction, anchor consistency and agreement with the previous
    snapshot ``prev_pred`` (same shape as ``maps.pred``).

    For a stack (``maps.pred`` of shape ``(M, P, R, R)``) every member is measured on its own and
    the logged numbers are member means; ``regions/member_agreement`` is the mean agreement
    between pairs of members, and ``regions/seed_agreement`` between pairs in the same ``groups``
    entry (members of one width with different seeds), with the ``(M, M)`` matrix in the arrays.
    """
    if maps.pred.ndim == 3:
        metrics, counts = _one(maps.pred, maps.anchor_pred, bank, num_classes, min_region_size, prev_pred)
        return Snapshot(metrics, None, {"region_counts": counts})
    m = maps.pred.shape[0]
    per, counts = [], []
    for i in range(m):
        prev = None if prev_pred is None else prev_pred[i]
        met, cnt = _one(maps.pred[i], maps.anchor_pred[i], bank, num_classes, min_region_size, prev)
        per.append(met)
        counts.append(cnt)
    keys = sorted({k for p in per for k in p})
    metrics = {k: float(np.mean([p[k] for p in per if k in p])) for k in keys}
    agree = np.ones((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            agree[i, j] = agree[j, i] = agreement(maps.pred[i], maps.pred[j])
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    if pairs:
        metrics["regions/member_agreement"] = float(np.mean([agree[i, j] for i, j in pairs]))
    same = [(i, j) for i, j in pairs if groups is not None and groups[i] == groups[j]]
    if same:
        metrics["regions/seed_agreement"] = float(np.mean([agree[i, j] for i, j in same]))
    return Snapshot(metrics, per, {"region_counts": np.stack(counts), "member_agreement": agree})

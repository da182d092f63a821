"""Numbers from label maps: fragmentation, agreement, Cohen's kappa, anchor consistency and
boundary fraction. Inputs are ``(P, R, R)`` integer class maps (numpy or torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from overparam_lit.utils import check

_EIGHT = np.ones((3, 3), dtype=bool)


def _np(a: object) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(a)


def _maps(pred: object) -> np.ndarray:
    p = _np(pred)
    if p.ndim == 2:
        p = p[None]
    check(p.ndim == 3, "label maps must have shape (planes, R, R)", p.shape, "Pass LabelMaps.pred.")
    return p


@dataclass
class Fragmentation:
    """Connected decision regions on a bank.

    Attributes:
        counts: ``(P, C)`` regions of each class on each plane (8-connectivity, regions smaller
            than ``min_region_size`` pixels not counted).
        raw: ``(P,)`` regions on each plane, all classes together.
        normalised: ``(P,)`` regions per class present on the plane, ``raw / present``, where
            a class is present if it has at least one counted region. It is 1 when every class
            that shows up on the plane is one connected piece, whatever the number of classes
            the plane crosses, so planes (and models) with different class counts compare.
        per_class: ``(C,)`` mean regions of class ``c`` over the planes where it is present
            (NaN where it never is).
    """

    counts: np.ndarray
    raw: np.ndarray
    normalised: np.ndarray
    per_class: np.ndarray

    @property
    def mean_raw(self) -> float:
        """Mean regions per plane."""
        return float(self.raw.mean())

    @property
    def mean_normalised(self) -> float:
        """Mean regions per present class per plane (>= 1)."""
        return float(self.normalised.mean())


def region_counts(pred: object, num_classes: int, min_region_size: int = 1) -> np.ndarray:
    """``(P, C)`` number of 8-connected regions of each class on each plane, counting only
    regions of at least ``min_region_size`` pixels (scipy.ndimage.label)."""
    check(min_region_size >= 1, "min_region_size must be >= 1", min_region_size, "Use e.g. 1 or 4.")
    maps = _maps(pred)
    counts = np.zeros((maps.shape[0], num_classes), dtype=np.int64)
    for p, m in enumerate(maps):
        for c in np.unique(m):
            check(
                0 <= c < num_classes, "label map holds a class outside [0, num_classes)", int(c),
                "Pass the model's num_classes.",
            )
            labels, n = ndimage.label(m == c, structure=_EIGHT)
            if min_region_size > 1 and n > 0:
                sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
                n = int((sizes >= min_region_size).sum())
            counts[p, c] = n
    return counts


def fragmentation(pred: object, num_classes: int, min_region_size: int = 1) -> Fragmentation:
    """Fragmentation of label maps: raw and normalised region counts (see
    :class:`Fragmentation`)."""
    counts = region_counts(pred, num_classes, min_region_size)
    raw = counts.sum(axis=1).astype(np.float64)
    present = (counts > 0).sum(axis=1)
    normalised = raw / np.maximum(present, 1)
    with np.errstate(invalid="ignore"):
        per_class = np.where(
            (counts > 0).any(axis=0),
            counts.sum(axis=0) / np.maximum((counts > 0).sum(axis=0), 1),
            np.nan,
        )
    return Fragmentation(counts, raw, normalised, per_class)


def agreement(pred_a: object, pred_b: object) -> float:
    """Fraction of grid points where two models predict the same class (same bank)."""
    a, b = _np(pred_a), _np(pred_b)
    check(a.shape == b.shape, "maps to compare must have the same shape", (a.shape, b.shape),
          "Compute both on the same plane bank.")
    return float((a == b).mean())


def cohen_kappa(pred_a: object, pred_b: object, num_classes: int) -> float:
    """Cohen's kappa between two models' maps: ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the
    agreement and ``p_e`` the agreement expected from the two class frequencies alone.

    When ``p_e == 1`` (both maps one and the same class everywhere) kappa is 1.
    """
    a, b = _np(pred_a).ravel().astype(np.int64), _np(pred_b).ravel().astype(np.int64)
    check(a.shape == b.shape, "maps to compare must have the same shape", (a.shape, b.shape),
          "Compute both on the same plane bank.")
    po = float((a == b).mean())
    fa = np.bincount(a, minlength=num_classes) / a.size
    fb = np.bincount(b, minlength=num_classes) / b.size
    pe = float((fa * fb).sum())
    if pe >= 1.0 - 1e-12:
        return 1.0 if po >= 1.0 - 1e-12 else 0.0
    return (po - pe) / (1.0 - pe)


def anchor_consistency(anchor_pred: object, labels: object) -> float:
    """Fraction of anchors the model assigns to ``labels`` (pass the noisy labels trained on
    to measure memorisation, or the clean labels for correctness)."""
    a, y = _np(anchor_pred), _np(labels)
    check(a.shape == y.shape, "anchor predictions and labels differ in shape", (a.shape, y.shape),
          "Pass LabelMaps.anchor_pred and PlaneBank.anchor_y (or anchor_y_true).")
    return float((a == y).mean()) if a.size else float("nan")


def boundary_fraction(pred: object) -> float:
    """Fraction of grid points with at least one 8-neighbour of another class (a measure of
    how much of the plane lies on decision boundaries; grows with fragmentation and with
    resolution)."""
    maps = _maps(pred)
    pad = np.pad(maps, ((0, 0), (1, 1), (1, 1)), mode="edge")
    r1, r2 = maps.shape[1], maps.shape[2]
    edge = np.zeros(maps.shape, dtype=bool)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            if di == 1 and dj == 1:
                continue
            edge |= pad[:, di : di + r1, dj : dj + r2] != maps
    return float(edge.mean())

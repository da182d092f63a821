"""Plane banks: fixed 2-D slices of input space on which decision regions are drawn.

A plane passes through three anchor samples ``x0, x1, x2``: its origin is ``x0`` and its
orthonormal basis ``(e1, e2)`` comes from Gram-Schmidt on ``x1 - x0`` and ``x2 - x0``, so
the anchors sit at plane coordinates ``(0, 0)``, ``(|x1 - x0|, 0)`` and
``(<x2 - x0, e1>, <x2 - x0, e2>)``. A bank holds many planes with a shared resolution and is
saved to disk, so every seed, width and epoch of a study sees identical planes.

For 2-D data (``input_shape == (2,)``) :func:`input_plane_bank` makes one plane that is the
input space itself (identity basis), with bounds around the data.

The bank itself is :class:`~overparam_lit.regions.bank.PlaneBank` and the anchor policies are in
:mod:`~overparam_lit.regions.anchors`; both are importable from here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from overparam_lit.regions.anchors import POLICIES, choose_anchors
from overparam_lit.regions.bank import PlaneBank
from overparam_lit.utils import check

__all__ = ["POLICIES", "PlaneBank", "choose_anchors", "input_plane_bank", "make_plane_bank", "plane_through"]


def _check_resolution(resolution: int) -> None:
    check(
        isinstance(resolution, int) and resolution >= 2,
        "plane resolution must be an integer >= 2 (grid points per axis)",
        resolution,
        "Set resolution to e.g. 64 (pictures) or 128 (fine fragmentation counts).",
    )


def _check_margin(margin: float) -> None:
    check(margin >= 0, "plane margin must be >= 0", margin, "Set margin to e.g. 0.5.")


def plane_through(
    x0: Tensor, x1: Tensor, x2: Tensor, tol: float = 1e-6
) -> tuple[Tensor, Tensor, Tensor]:
    """Origin, orthonormal basis and anchor coordinates of the plane through three points.

    Gram-Schmidt in float64: ``e1 = (x1 - x0) / |x1 - x0|``, ``e2`` the normalised part of
    ``x2 - x0`` orthogonal to ``e1``.

    Returns:
        ``origin (D,)``, ``basis (2, D)``, ``coords (3, 2)`` (anchor coordinates).

    Raises:
        ConfigError: if two anchors coincide or the three are collinear (the part of
            ``x2 - x0`` orthogonal to ``e1`` is below ``tol`` times its length).
    """
    a, b, c = (t.reshape(-1).to(torch.float64) for t in (x0, x1, x2))
    d1, d2 = b - a, c - a
    scale = max(float(d1.norm()), float(d2.norm()), float((c - b).norm()), 1e-300)
    for name, d in (("first and second", d1), ("first and third", d2), ("second and third", c - b)):
        check(
            float(d.norm()) > tol * max(scale, 1.0),
            f"plane anchors coincide: the {name} anchors are the same point",
            float(d.norm()),
            "Choose three different samples (a data set with duplicates needs another seed "
            "or policy).",
        )
    e1 = d1 / d1.norm()
    r = d2 - (d2 @ e1) * e1
    r = r - (r @ e1) * e1  # second pass keeps e2 orthogonal to machine precision
    check(
        float(r.norm()) > tol * float(d2.norm()),
        "plane anchors are collinear: the third anchor lies on the line through the first two",
        float(r.norm() / d2.norm()),
        "Choose anchors that span a plane (another seed or policy).",
    )
    e2 = r / r.norm()
    coords = torch.tensor(
        [[0.0, 0.0], [float(d1.norm()), 0.0], [float(d2 @ e1), float(d2 @ e2)]], dtype=torch.float64
    )
    return a, torch.stack([e1, e2]), coords


def _bounds(coords: Tensor, margin: float) -> Tensor:
    lo, hi = coords.min(dim=0).values, coords.max(dim=0).values
    ext = (hi - lo).max().clamp_min(1e-12)  # the same pad on both axes keeps pixels square-ish
    pad = margin * ext
    return torch.stack([lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad])


def make_plane_bank(
    x: Tensor,
    y: Tensor,
    y_true: Tensor,
    num_planes: int = 16,
    resolution: int = 64,
    policy: str = "distinct_classes",
    margin: float = 0.5,
    seed: int = 0,
    split: str = "train",
    anchor_ids: Tensor | None = None,
) -> PlaneBank:
    """Planes through anchor triples of a split ``(x, y, y_true)``.

    Args:
        x: ``(N, *input_shape)`` inputs of the split (e.g. ``datamodule.probe_set(None, split)``).
        y, y_true: labels trained on and clean labels of the split.
        num_planes: number of planes (ignored when ``anchor_ids`` is given).
        resolution: grid points per axis (>= 2).
        policy: anchor policy, see :func:`choose_anchors`.
        margin: fraction of the anchors' extent added on every side.
        seed: seed of the anchor draw.
        split: name of the split (stored for the record).
        anchor_ids: explicit ``(P, 3)`` anchor indices instead of a policy.
    """
    _check_resolution(resolution)
    _check_margin(margin)
    if anchor_ids is None:
        anchor_ids = choose_anchors(y, y_true, num_planes, policy, seed)
        # a draw may hit duplicate samples; redraw those planes with derived seeds
        ids = []
        for p, row in enumerate(anchor_ids):
            tries = 0
            while True:
                try:
                    plane_through(x[row[0]], x[row[1]], x[row[2]])
                    break
                except ValueError:
                    tries += 1
                    check(
                        tries < 20, "could not find anchors that span a plane", policy,
                        "The split has too many duplicate samples; use another policy.",
                    )
                    row = choose_anchors(y, y_true, 1, policy, seed * 7919 + p * 131 + tries)[0]
            ids.append(row)
        anchor_ids = torch.stack(ids)
    else:
        policy = "explicit"
        anchor_ids = torch.as_tensor(anchor_ids, dtype=torch.long).reshape(-1, 3)
    origins, bases, coords, bounds = [], [], [], []
    for row in anchor_ids:
        o, b, c = plane_through(x[row[0]], x[row[1]], x[row[2]])
        origins.append(o), bases.append(b), coords.append(c), bounds.append(_bounds(c, margin))
    return PlaneBank(
        origin=torch.stack(origins),
        basis=torch.stack(bases),
        bounds=torch.stack(bounds),
        resolution=int(resolution),
        input_shape=tuple(int(s) for s in x.shape[1:]),
        anchor_ids=anchor_ids,
        anchor_coords=torch.stack(coords),
        anchor_y=y.reshape(-1)[anchor_ids].long(),
        anchor_y_true=y_true.reshape(-1)[anchor_ids].long(),
        policy=policy,
        split=split,
        margin=float(margin),
        seed=int(seed),
    )


def input_plane_bank(
    x: Tensor,
    y: Tensor | None = None,
    y_true: Tensor | None = None,
    resolution: int = 128,
    margin: float = 0.1,
    max_anchors: int = 300,
    seed: int = 0,
    split: str = "train",
) -> PlaneBank:
    """One plane that is the 2-D input space itself, bounded by the data plus a margin.

    Up to ``max_anchors`` samples (drawn with ``seed``) are kept as anchors so pictures can
    mark them with their clean and noisy labels.
    """
    _check_resolution(resolution)
    _check_margin(margin)
    check(
        x.dim() == 2 and x.shape[1] == 2,
        "an input-plane bank needs 2-D inputs of shape (N, 2)",
        tuple(x.shape),
        "Use make_plane_bank (planes through anchors) for higher-dimensional data.",
    )
    x64 = x.to(torch.float64)
    n = x.shape[0]
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[: min(max_anchors, n)]
    ids = ids.sort().values
    y = torch.zeros(n, dtype=torch.long) if y is None else y.reshape(-1).long()
    y_true = y if y_true is None else y_true.reshape(-1).long()
    return PlaneBank(
        origin=torch.zeros(1, 2, dtype=torch.float64),
        basis=torch.eye(2, dtype=torch.float64).unsqueeze(0),
        bounds=_bounds(x64, margin).unsqueeze(0),
        resolution=int(resolution),
        input_shape=(2,),
        anchor_ids=ids.unsqueeze(0),
        anchor_coords=x64[ids].unsqueeze(0),
        anchor_y=y[ids].unsqueeze(0),
        anchor_y_true=y_true[ids].unsqueeze(0),
        policy="input",
        split=split,
        margin=float(margin),
        seed=int(seed),
    )

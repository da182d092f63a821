"""Plane banks: fixed 2-D slices of input space on which decision regions are drawn.

A plane passes through three anchor samples ``x0, x1, x2``: its origin is ``x0`` and its
orthonormal basis ``(e1, e2)`` comes from Gram-Schmidt on ``x1 - x0`` and ``x2 - x0``, so
the anchors sit at plane coordinates ``(0, 0)``, ``(|x1 - x0|, 0)`` and
``(<x2 - x0, e1>, <x2 - x0, e2>)``. A bank holds many planes with a shared resolution and is
saved to disk, so every seed, width and epoch of a study sees identical planes.

For 2-D data (``input_shape == (2,)``) :func:`input_plane_bank` makes one plane that is the
input space itself (identity basis), with bounds around the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from overparam_lit.torch_files import load_torch_file
from overparam_lit.utils import ConfigError, atomic_save, check

POLICIES = ("random", "distinct_classes", "same_class", "mislabelled")
_BANK_VERSION = 1


@dataclass
class PlaneBank:
    """A set of planes in input space, each sampled on a ``resolution x resolution`` grid.

    Attributes:
        origin: ``(P, D)`` float64, the plane origins (the first anchor), ``D = prod(input_shape)``.
        basis: ``(P, 2, D)`` float64, orthonormal rows ``e1, e2`` of each plane.
        bounds: ``(P, 4)`` float64, ``(u_min, u_max, v_min, v_max)`` in plane coordinates.
        resolution: grid points per axis (>= 2).
        input_shape: shape of one input sample.
        anchor_ids: ``(P, K)`` long, indices of the anchors in the split (``K = 3`` for planes
            through anchors; for the input plane of 2-D data, a sample of the data).
        anchor_coords: ``(P, K, 2)`` float64 plane coordinates of the ``K`` anchors.
        anchor_y: ``(P, K)`` long, labels trained on (possibly noisy) of the anchors.
        anchor_y_true: ``(P, K)`` long, clean labels of the anchors.
        policy: the anchor policy that made the bank (``input`` for a 2-D input plane).
        split: the data split the anchors came from.
        margin: fraction of the anchors' extent added on every side of the bounds.
        seed: seed of the anchor draw.
    """

    origin: Tensor
    basis: Tensor
    bounds: Tensor
    resolution: int
    input_shape: tuple[int, ...]
    anchor_ids: Tensor
    anchor_coords: Tensor
    anchor_y: Tensor
    anchor_y_true: Tensor
    policy: str = "random"
    split: str = "train"
    margin: float = 0.5
    seed: int = 0

    @property
    def num_planes(self) -> int:
        """Number of planes ``P``."""
        return int(self.origin.shape[0])

    @property
    def num_points(self) -> int:
        """Grid points of all planes, ``P * resolution**2``."""
        return self.num_planes * self.resolution**2

    def axes(self, plane: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid coordinates ``(u, v)`` of one plane: two ``resolution``-vectors, ends included."""
        u0, u1, v0, v1 = self.bounds[plane].tolist()
        r = self.resolution
        return np.linspace(u0, u1, r), np.linspace(v0, v1, r)

    def grid_coords(self, plane: int) -> Tensor:
        """``(R*R, 2)`` float64 plane coordinates in row-major map order.

        Map element ``[i, j]`` (row ``i``, column ``j``) sits at ``u = u_axis[j]``,
        ``v = v_axis[i]``: rows run along ``v`` and columns along ``u``, so
        ``imshow(map, origin="lower", extent=bounds)`` draws the plane the right way up.
        """
        u, v = self.axes(plane)
        vv, uu = np.meshgrid(v, u, indexing="ij")
        return torch.from_numpy(np.stack([uu.ravel(), vv.ravel()], axis=1))

    def points(self, plane: int, coords: Tensor) -> Tensor:
        """Input points ``origin + u e1 + v e2`` (float64) for ``(N, 2)`` plane coordinates."""
        c = coords.to(torch.float64)
        e = self.basis[plane]
        flat = self.origin[plane] + c[:, :1] * e[0] + c[:, 1:] * e[1]
        return flat.reshape(coords.shape[0], *self.input_shape)

    def grid(self, plane: int) -> Tensor:
        """All ``R*R`` grid points of one plane, ``(R*R, *input_shape)`` float64."""
        return self.points(plane, self.grid_coords(plane))

    def check_input_shape(self, input_shape: tuple[int, ...] | list[int]) -> None:
        """Refuse to use the bank on data whose samples have another shape."""
        shape = tuple(int(s) for s in input_shape)
        check(
            shape == self.input_shape,
            f"plane bank was made for inputs of shape {self.input_shape}, but the data's "
            "input shape differs",
            shape,
            "Use a bank made from this data set (delete or rename the bank file, or point "
            "bank_path elsewhere, and a new one is made).",
        )

    def state(self) -> dict:
        """Plain tensors, numbers and strings only: loads with ``torch.load(weights_only=True)``."""
        return {
            "version": _BANK_VERSION,
            "origin": self.origin,
            "basis": self.basis,
            "bounds": self.bounds,
            "resolution": int(self.resolution),
            "input_shape": list(self.input_shape),
            "anchor_ids": self.anchor_ids,
            "anchor_coords": self.anchor_coords,
            "anchor_y": self.anchor_y,
            "anchor_y_true": self.anchor_y_true,
            "policy": self.policy,
            "split": self.split,
            "margin": float(self.margin),
            "seed": int(self.seed),
        }

    def save(self, path: str | Path) -> Path:
        """Write the bank atomically with ``torch.save`` (weights-only loadable)."""
        return atomic_save(self.state(), path)

    @classmethod
    def from_state(cls, state: dict) -> PlaneBank:
        """Inverse of :meth:`state`."""
        check(
            state.get("version") == _BANK_VERSION,
            "unsupported plane bank version",
            state.get("version"),
            f"Re-create the bank with this version of overparam-lit (version {_BANK_VERSION}).",
        )
        return cls(
            origin=state["origin"],
            basis=state["basis"],
            bounds=state["bounds"],
            resolution=int(state["resolution"]),
            input_shape=tuple(int(s) for s in state["input_shape"]),
            anchor_ids=state["anchor_ids"],
            anchor_coords=state["anchor_coords"],
            anchor_y=state["anchor_y"],
            anchor_y_true=state["anchor_y_true"],
            policy=str(state["policy"]),
            split=str(state["split"]),
            margin=float(state["margin"]),
            seed=int(state["seed"]),
        )

    @classmethod
    def load(cls, path: str | Path) -> PlaneBank:
        """Read a bank written by :meth:`save` (``weights_only=True``); an unreadable file is a
        :class:`ConfigError` naming it."""
        fix = ("Delete it to have the bank made again, or point bank_path at a bank written by "
               "DecisionRegions or PlaneBank.save.")
        state = load_torch_file(path, "the plane bank", fix)
        try:
            return cls.from_state(state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ConfigError(f"the plane bank does not hold a bank ({type(err).__name__}: {err}) "
                              f"(got {str(path)!r}). {fix}") from None

    def select(self, planes: list[int]) -> PlaneBank:
        """A bank with a subset of the planes (same resolution and metadata)."""
        idx = torch.as_tensor(planes, dtype=torch.long)
        return PlaneBank(
            self.origin[idx], self.basis[idx], self.bounds[idx], self.resolution, self.input_shape,
            self.anchor_ids[idx], self.anchor_coords[idx], self.anchor_y[idx],
            self.anchor_y_true[idx], self.policy, self.split, self.margin, self.seed,
        )


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


def choose_anchors(
    y: Tensor, y_true: Tensor, num_planes: int, policy: str = "distinct_classes", seed: int = 0
) -> Tensor:
    """Draw ``(num_planes, 3)`` anchor indices into a split with labels ``y`` (trained on) and
    ``y_true`` (clean).

    Policies:
        ``random``: three different samples.
        ``distinct_classes``: three samples of three different clean classes.
        ``same_class``: three samples of one clean class (class drawn per plane).
        ``mislabelled``: the first anchor is a mislabelled sample (``y != y_true``), the other
        two are random samples of other clean classes than the first's noisy and clean labels
        (so the plane shows the region the net carved out for the memorised label).
    """
    check(policy in POLICIES, "unknown anchor policy", policy, f"Use one of {', '.join(POLICIES)}.")
    check(num_planes >= 1, "num_planes must be >= 1", num_planes, "Set num_planes to e.g. 16.")
    y, y_true = y.reshape(-1).long().cpu(), y_true.reshape(-1).long().cpu()
    n = y.numel()
    check(n >= 3, "at least three samples are needed to draw planes", n, "Use a larger split.")
    gen = torch.Generator().manual_seed(int(seed))
    classes = torch.unique(y_true)
    by_class = {int(c): torch.nonzero(y_true == c).reshape(-1) for c in classes}

    def pick(pool: Tensor, k: int) -> Tensor:
        return pool[torch.randperm(pool.numel(), generator=gen)[:k]]

    rows = []
    for _ in range(num_planes):
        if policy == "random":
            rows.append(torch.randperm(n, generator=gen)[:3])
        elif policy == "distinct_classes":
            check(
                classes.numel() >= 3,
                "policy 'distinct_classes' needs three classes in the split",
                classes.numel(),
                "Use policy 'random' or 'same_class'.",
            )
            cs = classes[torch.randperm(classes.numel(), generator=gen)[:3]]
            rows.append(torch.cat([pick(by_class[int(c)], 1) for c in cs]))
        elif policy == "same_class":
            big = [c for c, ids in by_class.items() if ids.numel() >= 3]
            check(
                len(big) > 0,
                "policy 'same_class' needs a class with three samples",
                {c: int(ids.numel()) for c, ids in by_class.items()},
                "Use a larger split or another policy.",
            )
            c = big[int(torch.randint(len(big), (1,), generator=gen))]
            rows.append(pick(by_class[c], 3))
        else:  # mislabelled
            flipped = torch.nonzero(y != y_true).reshape(-1)
            check(
                flipped.numel() > 0,
                "policy 'mislabelled' needs mislabelled samples (y != y_true), but the split "
                "has none",
                0,
                "Train with label noise (some labels flipped, e.g. 15%) or use another policy.",
            )
            first = pick(flipped, 1)
            others = torch.nonzero((y_true != y_true[first]) & (y_true != y[first])).reshape(-1)
            pool = others if others.numel() >= 2 else torch.nonzero(
                torch.arange(n) != first
            ).reshape(-1)
            rows.append(torch.cat([first, pick(pool, 2)]))
    return torch.stack(rows).long()


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

"""The plane bank: the planes of a study, sampled on a shared grid, saved and loaded.

:class:`PlaneBank` holds many planes of input space (origin, orthonormal basis, bounds) with a
shared resolution and their anchors; it is saved to disk (weights-only loadable), so every seed,
width and epoch of a study sees identical planes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from overparam_lit.torch_files import load_torch_file
from overparam_lit.utils import ConfigError, atomic_save, check

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

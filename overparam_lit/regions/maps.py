"""Label maps: a model's predicted class, confidence and margin on every grid point of a bank."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from overparam_lit import stopping
from overparam_lit.evaluation import eval_mode
from overparam_lit.regions.planes import PlaneBank
from overparam_lit.utils import check


@dataclass
class LabelMaps:
    """Label maps of one model on one bank.

    A model with members (outputs ``(M, B, C)``) gives every array a leading member axis.

    Attributes:
        pred: ``(P, R, R)`` int16 predicted class; row ``i`` is ``v``, column ``j`` is ``u``
            (see :meth:`PlaneBank.grid_coords`).
        confidence: ``(P, R, R)`` float32 top-1 softmax probability.
        margin: ``(P, R, R)`` float32 top-1 minus top-2 softmax probability.
        anchor_pred: ``(P, K)`` int16 predicted class at the anchors themselves.
    """

    pred: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    anchor_pred: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The maps as a dict for ``numpy.savez``."""
        return {
            "pred": self.pred,
            "confidence": self.confidence,
            "margin": self.margin,
            "anchor_pred": self.anchor_pred,
        }


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _bank_tensors(bank: PlaneBank, planes: list[int], device: torch.device) -> tuple[Tensor, ...]:
    # float64 geometry; on the model's device when it supports float64 (not MPS)
    dev = device if device.type != "mps" else torch.device("cpu")
    idx = torch.as_tensor(planes, dtype=torch.long)
    coords = torch.stack([bank.grid_coords(p) for p in planes])  # (P, R*R, 2)
    return (
        bank.origin[idx].to(dev), bank.basis[idx].to(dev), coords.to(dev),
        bank.anchor_coords[idx].to(dev),
    )


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    origin: Tensor,
    basis: Tensor,
    coords: Tensor,
    input_shape: tuple[int, ...],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Predictions at ``origin[p] + coords[p, k] @ basis[p]`` for all ``p, k``, in batches that
    may span planes; points are made one batch at a time (memory ``batch_size x D``)."""
    num_planes, per_plane = coords.shape[0], coords.shape[1]
    total = num_planes * per_plane
    flat_coords = coords.reshape(total, 2)
    preds, confs, margins = [], [], []
    for start in range(0, total, batch_size):
        stopping.check()  # a stop signal does not wait for the rest of a snapshot
        idx = torch.arange(start, min(start + batch_size, total), device=coords.device)
        pl = idx // per_plane
        c = flat_coords[idx]
        pts = origin[pl] + c[:, :1] * basis[pl, 0] + c[:, 1:] * basis[pl, 1]
        xb = pts.reshape(-1, *input_shape).to(device=device, dtype=dtype)
        out = model(xb)
        check(
            out.dim() in (2, 3) and out.shape[-1] >= 2,
            "label maps need class scores of shape (batch, num_classes >= 2), or (members, batch, "
            "num_classes) for a stack",
            tuple(out.shape),
            "Decision regions are defined for classification models only.",
        )
        prob = torch.softmax(out.float(), dim=-1)
        top = prob.topk(2, dim=-1).values
        preds.append(out.argmax(dim=-1).to("cpu", torch.int16))
        confs.append(top[..., 0].cpu())
        margins.append((top[..., 0] - top[..., 1]).cpu())
    return torch.cat(preds, dim=-1), torch.cat(confs, dim=-1), torch.cat(margins, dim=-1)


def map_bytes(num_planes: int, resolution: int, members: int = 1) -> int:
    """Bytes of one snapshot's maps (class, confidence and margin per grid point and member)."""
    return int(num_planes) * int(resolution) ** 2 * int(members) * 10


def label_maps(
    model: nn.Module,
    bank: PlaneBank,
    batch_size: int = 8192,
    planes: list[int] | None = None,
) -> LabelMaps:
    """Evaluate ``model`` on every grid point of ``bank`` (or of the listed ``planes``).

    Runs under ``torch.no_grad`` in eval mode (so batch norm uses its running statistics and
    needs no collectives) and restores each submodule's previous mode afterwards. Grid points
    are made in float64 from the bank, ``batch_size`` at a time (batches span planes), and
    cast to the model's device and dtype, so the same bank gives the same points bit for bit.
    """
    check(
        isinstance(batch_size, int) and batch_size >= 1, "batch_size must be an integer >= 1",
        batch_size, "Use e.g. 8192.",
    )
    device, dtype = _device_dtype(model)
    planes = list(range(bank.num_planes)) if planes is None else list(planes)
    r = bank.resolution
    with eval_mode(model):  # every submodule's own mode comes back afterwards
        origin, basis, coords, anchor_coords = _bank_tensors(bank, planes, device)
        shape = bank.input_shape
        pr, cf, mg = _evaluate(model, origin, basis, coords, shape, batch_size, device, dtype)
        ap, _, _ = _evaluate(model, origin, basis, anchor_coords, shape, batch_size, device, dtype)
    p = len(planes)
    lead = tuple(pr.shape[:-1])  # (M,) for a stack of members
    return LabelMaps(
        pred=pr.reshape(*lead, p, r, r).numpy(),
        confidence=cf.reshape(*lead, p, r, r).numpy(),
        margin=mg.reshape(*lead, p, r, r).numpy(),
        anchor_pred=ap.reshape(*lead, p, -1).numpy(),
    )


def load_label_maps(path: str) -> LabelMaps:
    """Read maps saved with ``numpy.savez`` of :meth:`LabelMaps.arrays`."""
    with np.load(path) as z:
        return LabelMaps(z["pred"], z["confidence"], z["margin"], z["anchor_pred"])

"""Masked training shared by IMP and ticket starts: boolean masks keyed by parameter name.

A masked model is the plain model with zeros in it, so ``state_dict`` keys never change. The
gradients of pruned entries are zeroed before every optimizer step (momentum and Adam moments of
pruned entries stay zero) and the weights are multiplied by the masks after every step (weight
decay or any other optimizer cannot revive them).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from overparam_lit import pruning


def module_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of ``module``, cloned to the CPU."""
    items = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {k: v.detach().to("cpu", copy=True) for k, v in items.items()}


def broadcast_masks(trainer: L.Trainer, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rank 0's masks on every rank (``torch.distributed.broadcast``, names in sorted order)."""
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return masks
    device = trainer.strategy.root_device
    out = {}
    for name in sorted(masks):
        t = masks[name].to(device=device, dtype=torch.uint8)
        dist.broadcast(t, src=0)
        out[name] = t.bool()
    return {n: out[n] for n in masks}


@torch.no_grad()
def evaluate_splits(trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> dict[str, float]:
    """Mean loss and accuracy of ``pl_module`` on a split, summed over ranks.

    Batches are ``(x, y, y_true)`` (or ``(x, y)``); the clean label is the target.
    """
    dm = trainer.datamodule
    loader_fn = getattr(dm, f"{split}_dataloader", None) if dm is not None else None
    if loader_fn is None:
        return {}
    was_training = pl_module.training
    pl_module.eval()
    device = pl_module.device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    classify = getattr(pl_module, "task", "classification") == "classification"
    for batch in loader_fn():
        x, y_true = batch[0].to(device), batch[-1].to(device)
        out = pl_module(x)
        if hasattr(pl_module, "loss"):
            loss = pl_module.loss(out, y_true)
        else:
            loss = torch.nn.functional.cross_entropy(out, y_true)
        n = x.shape[0]
        totals[0] += loss.double() * n
        if classify:
            totals[1] += (out.argmax(dim=1) == y_true).sum()
        totals[2] += n
    pl_module.train(was_training)
    totals = trainer.strategy.reduce(totals, reduce_op="sum")
    count = float(totals[2].clamp_min(1))
    res = {f"{split}/loss": float(totals[0]) / count}
    if classify:
        res[f"{split}/acc"] = float(totals[1]) / count
    return res


class MaskedTraining(L.Callback):
    """Keeps masked entries exactly zero during training (shared by IMP and ticket starts)."""

    def __init__(self) -> None:
        self.masks: dict[str, Tensor] | None = None
        self._params: list[Tensor] = []
        self._fmasks: list[Tensor] = []
        self._active = False

    def _bind(self, pl_module: L.LightningModule) -> None:
        """Align float masks with the module's parameters (call after every mask change)."""
        if self.masks is None:
            self._params, self._fmasks, self._active = [], [], False
            return
        named = dict(pl_module.named_parameters())
        self._params = [named[n] for n in self.masks]
        pairs = zip(self._params, self.masks.values(), strict=True)
        self._fmasks = [m.to(device=p.device, dtype=p.dtype) for p, m in pairs]
        self._active = not all(bool(m.all()) for m in self.masks.values())
        if self._active:
            pruning.apply_masks_(self._params, self._fmasks)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._active:
            grads = [p.grad for p in self._params]
            if any(g is None for g in grads):
                pruning.mask_grads_(self._params, self._fmasks)
            else:
                torch._foreach_mul_(grads, self._fmasks)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._active:
            with torch.no_grad():
                torch._foreach_mul_(self._params, self._fmasks)

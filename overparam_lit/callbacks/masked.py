"""Masked training shared by IMP and ticket starts: boolean masks keyed by parameter name.

A masked model is the plain model with zeros in it, so ``state_dict`` keys never change. The
gradients of pruned entries are zeroed before every optimizer step (momentum and Adam moments of
pruned entries stay zero) and the weights are multiplied by the masks after every step (weight
decay or any other optimizer cannot revive them). Masks of a model with members carry the
leading member axis of its parameters.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from typing_extensions import override

from overparam_lit import pruning


def module_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """Every parameter and persistent buffer of ``module``, cloned to the CPU."""
    items = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    keys = set(module.state_dict(keep_vars=True))
    return {k: v.detach().to("cpu", copy=True) for k, v in items.items() if k in keys}


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
def evaluate_members(trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> dict[str, Tensor]:
    """Each member's mean loss and accuracy on a split, summed over ranks: ``{"val/loss": (M,),
    "val/acc": (M,)}`` (``M = 1`` for a single model). The clean label is the target."""
    dm = trainer.datamodule
    loader_fn = getattr(dm, f"{split}_dataloader", None) if dm is not None else None
    if loader_fn is None:
        return {}
    was_training = pl_module.training
    pl_module.eval()
    device = pl_module.device
    classify = getattr(pl_module, "task", "classification") == "classification"
    totals: Tensor | None = None  # (M, 3): loss sum, correct, count
    for batch in loader_fn():
        x, y_true = batch[0].to(device), batch[-1].to(device)
        if x.is_floating_point():
            x = x.to(pl_module.dtype)  # the precision the fit runs in (the loop's batches are cast)
        out = pl_module(x)
        stacked = getattr(pl_module, "members", None) is not None
        if hasattr(pl_module, "member_losses"):
            losses = pl_module.member_losses(out, y_true)
        else:
            losses = torch.nn.functional.cross_entropy(out, y_true).reshape(1)
        outs = out if stacked else out.unsqueeze(0)
        n = x.shape[0]
        hits = (outs.argmax(-1) == y_true).sum(-1) if classify else torch.zeros_like(losses)
        part = torch.stack([losses.double() * n, hits.double(), torch.full_like(losses, n).double()], 1)
        totals = part if totals is None else totals + part
    pl_module.train(was_training)
    if totals is None:
        return {}
    totals = trainer.strategy.reduce(totals, reduce_op="sum")
    count = totals[:, 2].clamp_min(1)
    res = {f"{split}/loss": (totals[:, 0] / count).cpu()}
    if classify:
        res[f"{split}/acc"] = (totals[:, 1] / count).cpu()
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

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._active:
            pruning.mask_grads_(self._params, self._fmasks)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._active:
            pruning.apply_masks_(self._params, self._fmasks)

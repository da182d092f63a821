"""Masked training shared by IMP and ticket starts: boolean masks keyed by parameter name.

A masked model is the plain model with zeros in it, so ``state_dict`` keys never change. The
gradients of pruned entries are zeroed before every optimizer step (momentum and Adam moments of
pruned entries stay zero) and the weights are multiplied by the masks after every step (weight
decay or any other optimizer cannot revive them). Masks of a model with members carry the
leading member axis of its parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from typing_extensions import override

from overparam_lit import pruning
from overparam_lit.evaluation import member_totals
from overparam_lit.models.steps import StepAwareCallback


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


def _cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets).reshape(1)


def evaluate_members(trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> dict[str, Tensor]:
    """Each member's mean loss and accuracy on a split, summed over ranks: ``{"val/loss": (M,),
    "val/acc": (M,)}`` (``M = 1`` for a single model). The clean label is the target. A stop signal
    does not wait for the rest of an IMP level's evaluation (``member_totals(..., checks=True)``)."""
    dm = trainer.datamodule
    loader_fn = getattr(dm, f"{split}_dataloader", None) if dm is not None else None
    if loader_fn is None:
        return {}
    classify = getattr(pl_module, "task", "classification") == "classification"
    loss_fn = getattr(pl_module, "member_losses", None) or _cross_entropy
    batches = ((batch[0], batch[-1]) for batch in loader_fn())
    # the inputs in the precision the fit runs in (the loop's batches are cast), targets as they are
    totals = member_totals(pl_module, loss_fn, batches, device=pl_module.device, dtype=pl_module.dtype,
                           cast_targets=False, accuracy=classify,
                           stacked=getattr(pl_module, "members", None) is not None,
                           members=getattr(pl_module, "num_members", None),
                           distributed=trainer.world_size > 1, checks=True)
    if not totals.count:
        return {}
    res = {f"{split}/loss": totals.mean_loss().cpu()}
    if classify:
        res[f"{split}/acc"] = totals.accuracy().cpu()
    return res


def evaluate_splits(trainer: L.Trainer, pl_module: L.LightningModule, splits: Sequence[str]
                    ) -> dict[str, Tensor]:
    """:func:`evaluate_members` of every split in ``splits``, in one mapping."""
    out: dict[str, Tensor] = {}
    for split in splits:
        out.update(evaluate_members(trainer, pl_module, split))
    return out


class MaskedTraining(StepAwareCallback):
    """Keeps masked entries exactly zero during training (shared by IMP and ticket starts) through
    the bound :class:`~overparam_lit.pruning.Masks` of :attr:`masks`."""

    def __init__(self) -> None:
        self.masks: dict[str, Tensor] | None = None
        self._bound: pruning.Masks | None = None

    def _bind(self, pl_module: L.LightningModule) -> None:
        """Bind :attr:`masks` to the module's parameters and hand them to the module, which owns
        the current masks (``pruning_masks`` of :class:`~overparam_lit.protocols.StudyModule`:
        what a Hessian probe reads). Call after every mask change."""
        named = dict(pl_module.named_parameters())
        self._bound = None if self.masks is None else pruning.Masks(self.masks).bind(named)
        pl_module.pruning_masks = self.masks

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The module holds the masks before any study's ``on_train_start`` (a restored state's)."""
        pl_module.pruning_masks = self.masks

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._bound is not None:
            self._bound.mask_grads_()

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._bound is not None:
            self._bound.apply_()

    @override
    def on_optimizer_step_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bound is not None:  # every optimizer step of a call of several
            self._bound.apply_()

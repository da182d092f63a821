"""Every private Lightning API the package uses, in one place.

Lightning keeps its private helpers (module paths with a leading underscore, underscored methods)
free to change between minor releases. The package touches them only through the functions
below, each covered by one test in ``tests/test_compat.py``, so a Lightning upgrade that breaks
one fails there with a name instead of deep inside a fit. ``pyproject.toml`` bounds
``lightning`` to the releases these were tested with.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

TESTED_LIGHTNING = ("2.4", "2.6")
"""Oldest and newest Lightning minor release these shims were written against."""


def fresh_optimizers(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Rebuild the optimizers and LR schedulers of a running fit from ``configure_optimizers()``.

    Used by callbacks that restart training inside one fit (IMP levels): the trainer's strategy
    gets new optimizers and scheduler configs, exactly as at the start of ``fit``.
    """
    from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers

    optimizers, schedulers = _init_optimizers_and_lr_schedulers(pl_module)
    trainer.strategy.optimizers = optimizers
    trainer.strategy.lr_scheduler_configs = schedulers


def save_checkpoints_now(callback: ModelCheckpoint, trainer: L.Trainer, epoch: int | None = None) -> None:
    """Let ``callback`` write its checkpoints (top-k file and ``last.ckpt``) at this moment.

    ``ModelCheckpoint`` only saves from its own hooks; this runs the same two steps it runs at
    the end of a training epoch. ``epoch`` replaces the ``{epoch}`` value used to format the
    file name (the trainer's ``current_epoch`` by default).
    """
    candidates: dict[str, Any] = callback._monitor_candidates(trainer)
    if epoch is not None:
        import torch

        candidates["epoch"] = torch.tensor(int(epoch))
    callback._save_topk_checkpoint(trainer, candidates)
    callback._save_last_checkpoint(trainer, candidates)


def drop_wandb_anonymous(logger: Any) -> None:
    """Stop ``WandbLogger`` from passing ``anonymous=None`` to ``wandb.init`` (W&B >= 0.19 warns
    "The anonymous setting has no effect" on every run when the key is present at all)."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)

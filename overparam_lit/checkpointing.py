"""Checkpoints of a run folder: written atomically, at the boundary between two epochs.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in its own folder and
  renames it into place. A kill leaves the old checkpoint or the new one, never a truncated
  file, and no orphan in ``TMPDIR`` (Lightning's default goes through a temporary file there,
  which ends up as a 0-byte ``last.ckpt`` when ``TMPDIR`` lies on another file system).
- :class:`RunCheckpoint` (``checkpoints/epoch=NNN.ckpt`` and ``last.ckpt``) saves once an epoch is
  complete: after the epoch's train and validation rows were handed to the loggers, before the
  next epoch's first hook. Only the fit's last checkpoint waits for the disk (fsync); the others
  rely on the order of atomic renames, which no kill of the process can break. Lightning's own
  ``ModelCheckpoint`` saves at the end of validation, before the epoch's training metrics are
  logged, so a kill just after it lost that train row.
  :class:`EpochBoundary` (first in the callback list) triggers the save at the next epoch's
  start; the last epoch is saved in ``on_train_end``, after the other callbacks finished it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from overparam_lit.compat import mark_epoch_boundary, save_checkpoints_now
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_write, fsync_deferred

__all__ = ["AtomicCheckpointIO", "EpochBoundary", "RunCheckpoint"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints atomically in their own folder
    (temporary file, fsync, rename, fsync of the folder). Remote URLs use Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        target = Path(str(path).removeprefix("file://"))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)

        atomic_write(target, write)


class RunCheckpoint(ModelCheckpoint):
    """``epoch=NNN.ckpt`` (the newest epoch only) and ``last.ckpt`` in ``checkpoints/``, saved at
    epoch boundaries (see the module docstring); ``NNN`` is the epoch just completed.

    Args:
        dirpath: the run's ``checkpoints/`` folder.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(dirpath=str(dirpath), filename=RunFolder.CKPT_FILENAME, save_last=True,
                         enable_version_counter=False)
        self._epoch_done = False
        self._at_boundary = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_done = True  # saved at the boundary, once the epoch's rows are logged

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def save_epoch(self, trainer: L.Trainer, final: bool = False) -> None:
        """Save now if an epoch completed since the last save (a resumed fit saves nothing
        before it has trained an epoch). Only the ``final`` save waits for the disk: the others
        are atomic renames in write order, which a killed process cannot break
        (:func:`~overparam_lit.utils.fsync_deferred`)."""
        if not self._epoch_done or trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._epoch_done = False
        self._at_boundary = True
        try:
            with contextlib.nullcontext() if final else fsync_deferred():
                save_checkpoints_now(self, trainer, epoch=max(0, trainer.current_epoch - 1))
        finally:
            self._at_boundary = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._at_boundary:  # restores as "epoch finished", starting the next one normally
            mark_epoch_boundary(checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_epoch(trainer, final=True)


class EpochBoundary(L.Callback):
    """Saves the :class:`RunCheckpoint` of the epoch that just ended at the start of the next
    one, before any other callback's ``on_train_epoch_start`` (keep it first in the list)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, RunCheckpoint):
                cb.save_epoch(trainer)


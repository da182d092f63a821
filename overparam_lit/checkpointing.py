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
- :class:`StopOnSignal` stops a fit at the next optimizer step after SIGTERM, SIGUSR1 or SIGUSR2
  (:mod:`overparam_lit.stopping`): the newest checkpoint is made durable and the run's tables are
  cut back to it, as a resume would find them after a kill.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from overparam_lit import stopping
from overparam_lit.compat import mark_epoch_boundary, save_checkpoints_now
from overparam_lit.models.steps import StepAwareCallback
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_write, fsync_deferred, fsync_path, local_file

__all__ = ["AtomicCheckpointIO", "EpochBoundary", "RunCheckpoint", "StopOnSignal", "resumes_after_stop"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints atomically in their own folder
    (temporary file, fsync, rename, fsync of the folder). Remote URLs use Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        target = local_file(path)
        if target is None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")

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



def resumes_after_stop(trainer: L.Trainer, exception: BaseException) -> bool:
    """Whether ``exception`` ends a fit that a stop signal interrupted (:mod:`overparam_lit.stopping`,
    or Lightning's own SIGTERM exit) and that keeps run checkpoints to resume from."""
    stopped = isinstance(exception, (stopping.StopRequested, SIGTERMException))
    return stopped and any(isinstance(cb, RunCheckpoint) for cb in trainer.checkpoint_callbacks)


class StopOnSignal(StepAwareCallback):
    """Stops a fit at the next optimizer step boundary once SIGTERM, SIGUSR1 or SIGUSR2 arrived
    (the signals a scheduler sends before or at a time limit), by raising
    :class:`~overparam_lit.stopping.StopRequested`; the CLI then exits with
    :data:`~overparam_lit.stopping.REQUEUE_EXIT_CODE`.

    The run folder is left as a resume expects it: the newest checkpoint (the last completed
    epoch) is made durable, and ``metrics.csv`` and ``members.csv`` are cut back to its rows
    (:meth:`~overparam_lit.loggers.CheckpointedCSV.rewind`). The steps after it run again on
    resume, so the resumed rows and weights equal an uninterrupted run's. Under DDP the ranks
    agree at each step boundary (one ``all_reduce``) and stop together. Inside a call of several
    optimizer steps (``--model.steps_per_call``) it checks after every step.

    The handlers replace Lightning's SIGTERM handling once training starts (which would end the
    fit with exit code 0 at the next batch) and its SLURM auto-requeue on SIGUSR1 (this fit does
    not requeue itself: its exit code asks the scheduler or ``overparam-lit sweep`` to).
    """

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stopping.local_checks(trainer.world_size == 1)

    @override
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopping.install()

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopping.install()  # after Lightning's signal connector registered its own handlers

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.stop_if_requested(trainer)

    @override
    def on_optimizer_step_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_if_requested(trainer)

    @override
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.world_size == 1:
            stopping.check()

    def stop_if_requested(self, trainer: L.Trainer) -> None:
        """Raise :class:`~overparam_lit.stopping.StopRequested` if a stop signal arrived (on any
        rank, under DDP)."""
        signum = stopping.requested()
        stop = signum is not None
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop:
            raise stopping.StopRequested(signum if signum is not None else int(signal.SIGTERM))

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if not isinstance(exception, (stopping.StopRequested, SIGTERMException)):
            return
        folder = RunFolder.of(trainer)
        exception.stopped_at = (int(trainer.current_epoch), int(trainer.global_step))  # type: ignore[attr-defined]
        exception.run_folder = str(folder.root)  # type: ignore[attr-defined]
        if resumes_after_stop(trainer, exception) and trainer.is_global_zero:
            for path in folder.checkpoint_files():
                fsync_path(path)
            fsync_path(folder.checkpoints)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stopping.local_checks(True)

"""Every private Lightning API the package uses, in one place.

Lightning keeps its private helpers (module paths with a leading underscore, underscored methods)
free to change between minor releases. The package touches them only through the functions
below, each covered by one test in ``tests/unit/test_compat.py``, so a Lightning upgrade that breaks
one fails there with a name instead of deep inside a fit. ``pyproject.toml`` bounds
``lightning`` to the releases these were tested with.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

TESTED_LIGHTNING = ("2.6", "2.6")
"""Oldest and newest Lightning minor release these shims were tested with (2.6.6)."""


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

    Without a monitored metric both files hold the same state (``last_model_path`` is set before
    either is written), so a local ``last.ckpt`` is not built and serialised a second time: it is
    a copy of the top-k file's bytes (:func:`~overparam_lit.utils.atomic_copy`), a file of its
    own, so a damaged one still leaves the other to resume from. That halves the cost of a tiny
    net's checkpoint every epoch.
    """
    import torch

    from overparam_lit.utils import atomic_copy, local_file

    candidates: dict[str, Any] = callback._monitor_candidates(trainer)
    if epoch is not None:
        candidates["epoch"] = torch.tensor(int(epoch))
    if (not callback.save_last or callback.save_last == "link" or callback.save_top_k != 1
            or callback.monitor is not None or callback._enable_version_counter
            or local_file(callback.dirpath) is None):
        callback._save_topk_checkpoint(trainer, candidates)
        callback._save_last_checkpoint(trainer, candidates)
        return
    last = callback.format_checkpoint_name(candidates, callback.CHECKPOINT_NAME_LAST)
    previous, callback.last_model_path = callback.last_model_path, last  # part of the saved state
    callback._save_topk_checkpoint(trainer, candidates)
    if trainer.is_global_zero:
        atomic_copy(local_file(callback.best_model_path), local_file(last))
    trainer.strategy.barrier("save_checkpoints_now")
    if previous and previous != last and callback._should_remove_checkpoint(trainer, previous, last):
        callback._remove_checkpoint(trainer, previous)


def mark_epoch_boundary(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint taken in ``on_train_epoch_start`` restore as an end-of-epoch checkpoint.

    At that hook Lightning has already counted the new epoch as "ready"; a checkpoint with that
    count restores as "restarted on epoch start" and then skips the epoch's batches (the batch
    progress of the previous, finished epoch is restored with it). Setting ``ready`` back to
    ``started`` gives the state Lightning saves at the end of training, which resumes by starting
    the next epoch normally (its ``on_train_epoch_start`` hooks run again).
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
    if not isinstance(progress, dict):
        return
    for part in ("total", "current"):
        counts = progress.get(part)
        if isinstance(counts, dict) and "ready" in counts and "started" in counts:
            counts["ready"] = counts["started"]


def wandb_run_if_started(logger: Any) -> Any | None:
    """The W&B run of a ``WandbLogger`` when it was started, else ``None`` (never starts one;
    ``logger.experiment`` would)."""
    return getattr(logger, "_experiment", None)


def drop_wandb_anonymous(logger: Any) -> None:
    """Stop ``WandbLogger`` from passing ``anonymous=None`` to ``wandb.init`` (W&B >= 0.19 warns
    "The anonymous setting has no effect" on every run when the key is present at all)."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def cheap_cuda_checks() -> bool:
    """On a machine without a GPU, undo ``lightning.fabric``'s ``PYTORCH_NVML_BASED_CUDA_CHECK=1``.

    Lightning sets it at import so that asking whether CUDA is available never initialises CUDA
    (a process forked later could not use it). torch then tries to load NVML anew at every such
    check, and every optimizer step checks (``Optimizer._accelerator_graph_capture_health_check``):
    about 30 us a step on a CPU-only machine, a tenth of a small net's step. Where NVML finds no
    device there is no CUDA to initialise, and the ordinary check answers from a cache. Returns
    whether the variable was dropped.
    """
    import torch

    if os.environ.get(NVML_CHECK) != "1" or not torch.backends.cuda.is_built():
        return False
    if torch.cuda.device_count() > 0:  # NVML-based here: initialises nothing
        return False
    os.environ.pop(NVML_CHECK)
    return True


def set_epoch_calls(trainer: L.Trainer, calls: int | float) -> None:
    """Make the running epoch ``calls`` Lightning steps long (several optimizer steps per call).

    The epoch loop ends an epoch after ``trainer.num_training_batches`` Lightning steps
    (``fit_loop.max_batches``): the number of calls of this epoch, and the number of batches again
    between epochs (where callbacks read it as the epoch's optimizer steps).
    """
    trainer.fit_loop.max_batches = calls


def set_val_due(trainer: L.Trainer, due: bool) -> None:
    """Make the epoch loop validate after the running Lightning step exactly when ``due``.

    For a sized training set the loop validates when ``(batch_idx + 1) % val_check_batch == 0``,
    counting Lightning steps; with several optimizer steps per call the module decides in
    optimizer steps instead (in its ``on_train_batch_end``, which runs just before the check).
    """
    trainer.val_check_batch = 1 if due else 10**15


def settle_ddp_buckets(ddp: Any) -> None:
    """Let DDP build its gradient buckets from the backward passes seen so far.

    In the first iteration DDP's reducer records the order in which gradients arrive and rebuilds
    its buckets at the next preparation. Lightning's ``prepare_for_backward`` (used before each
    backward inside a call of several optimizer steps) rebuilds first; the call's last backward is
    prepared by DDP's own forward, which does not, so the order of two passes would be recorded.
    """
    ddp.reducer._rebuild_buckets()


def count_inner_steps(trainer: L.Trainer, steps: int) -> None:
    """Count ``steps`` optimizer steps taken inside a Lightning step as if Lightning had taken them.

    ``trainer.global_step`` is the automatic optimisation's completed optimizer-step count, and the
    loggers' step is ``_batches_that_stepped`` (one per Lightning step): both advance by ``steps``.
    """
    loop = trainer.fit_loop.epoch_loop
    progress = loop.automatic_optimization.optim_progress.optimizer
    for _ in range(steps):
        progress.zero_grad.increment_ready()
        progress.zero_grad.increment_started()
        progress.zero_grad.increment_completed()
        progress.step.increment_ready()
        progress.step.increment_completed()
    loop._batches_that_stepped += steps

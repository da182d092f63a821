"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020; Renda
et al. 2020) as a Lightning callback over :class:`~overparam_lit.pruning.ImpOptions` and
:class:`~overparam_lit.pruning.ImpLevels`; ticket starts are in :mod:`.ticket`. Members of a stacked
fit are pruned each by its own magnitudes, and every level artifact lists every member.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from overparam_lit import pruning
from overparam_lit.callbacks.masked import MaskedTraining, broadcast_masks, evaluate_splits
from overparam_lit.callbacks.options import takes_options
from overparam_lit.compat import fresh_optimizers
from overparam_lit.pruning import module_state
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_save, atomic_write_json, check, log_scalars


@takes_options(pruning.ImpOptions)
class IterativeMagnitudePruning(MaskedTraining):
    """Iterative magnitude pruning with rewinding, all levels in one ``fit``.

    Level 0 trains the dense net for ``epochs_per_level`` epochs (or ``steps_per_level`` optimizer
    steps). Each further level prunes to the schedule's density by magnitude, rewinds, and retrains
    the full schedule with a fresh optimizer and LR scheduler. The callback sets
    ``max_epochs = (levels + 1) * epochs_per_level`` (or ``max_steps``, levels in steps). At the
    end of each level it logs ``imp/level``, ``imp/density``, ``imp/sparsity`` and
    ``imp/<split>_acc`` / ``imp/<split>_loss`` (final) and ``imp/best_val_acc`` (best validation
    during the level), means over members, and writes ``<run_dir>/imp/level_XX/``: ``mask.pt``,
    ``rewind.pt`` (the dense state the level started from: a ticket), ``final.pt``,
    ``sparsity.json``, ``metrics.json``; ``imp/summary.json`` lists every level and member.

    The options are the fields of :class:`~overparam_lit.pruning.ImpOptions`, given as one
    ``ImpOptions`` or as keywords (:func:`~overparam_lit.callbacks.options.takes_options`).
    """

    def __init__(self, options: pruning.ImpOptions) -> None:
        self.opts = options
        self.levels = self.opts.sparsity.levels
        self.levels_state = pruning.ImpLevels.from_options(self.opts)
        super().__init__()

    @property
    def masks(self) -> dict[str, Tensor] | None:
        """The current masks (``None`` before setup)."""
        return self.levels_state.masks

    @masks.setter
    def masks(self, value: dict[str, Tensor] | None) -> None:
        self.levels_state.masks = value

    @property
    def level(self) -> int:
        """The current level (0 is dense)."""
        return self.levels_state.level

    @property
    def history(self) -> list[dict[str, Any]]:
        """The records of finished levels (``summary.json``'s ``levels``)."""
        return self.levels_state.history

    @property
    def snapshot(self) -> dict[str, Tensor] | None:
        """The rewind point (the state of level 0 at ``rewind_step``), once reached."""
        return self.levels_state.snapshot

    @property
    def total_epochs(self) -> int:
        """``(levels + 1) * epochs_per_level`` once resolved in ``setup``."""
        return self.levels_state.total_epochs

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        note = self.levels_state.resolve_epochs(trainer.max_epochs, trainer.max_steps, self.opts)
        if note:
            rank_zero_info(note)
        self._set_length(trainer)
        members = getattr(pl_module, "members", None)
        check(self.opts.granularity == "unstructured" or members is None,
              "structured IMP prunes single models only", len(members or ()),
              "Use granularity 'unstructured' with members, or fit without --model.seeds/widths.")
        self.levels_state.attach(pl_module, self.opts)
        if self.opts.replay_order:
            check(callable(getattr(trainer.datamodule, "replay_order", None)),
                  "replay_order needs an overparam-lit data module", type(trainer.datamodule).__name__,
                  "Use a data module of overparam_lit.data, or set replay_order: false.")
            check(trainer.accumulate_grad_batches == 1, "replay_order counts one batch per optimizer step",
                  trainer.accumulate_grad_batches, "Set accumulate_grad_batches: 1 or replay_order: false.")

    def _set_length(self, trainer: L.Trainer) -> None:
        state = self.levels_state
        trainer.fit_loop.max_epochs = state.total_epochs
        if state.steps_per_level is not None:
            trainer.fit_loop.epoch_loop.max_steps = state.total_steps

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._set_length(trainer)  # a restored state fixes the length

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = self.levels_state
        state.check_rewind_step(trainer.num_training_batches, trainer.accumulate_grad_batches, self.opts)
        if self.opts.rewind == "finetune" and state.level >= 1:
            trainer.strategy.lr_scheduler_configs = []  # resumed: keep the final learning rate
        self._bind(pl_module)
        if self.opts.replay_order:
            trainer.datamodule.replay_order(state.steps_of_level(trainer.num_training_batches, 1))
        if (start := state.initial_start(pl_module, trainer.global_step, self.opts)) is not None:
            self._write_level_start(trainer, 0, start)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.levels_state.due_step(trainer.global_step):  # levels in steps: a call starts a level
            self._finish_level(trainer, pl_module)
            self._start_level(trainer, pl_module, self.levels_state.level + 1)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step > 0 and self.levels_state.wants_snapshot(trainer.global_step, self.opts):
            self.levels_state.snapshot = module_state(pl_module)

    @override
    def next_event_step(self, trainer: L.Trainer, step: int) -> int | None:
        """The rewind step while level 0 has not taken its rewind point, and the level boundaries
        of levels in steps (a call ends there; the next level starts with the next call)."""
        rewind = self.opts.rewind_step
        found = [rewind] if rewind > step and self.levels_state.wants_snapshot(rewind, self.opts) else []
        if (boundary := self.levels_state.next_boundary(step)) is not None:
            found.append(boundary)
        return min(found) if found else None

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and hasattr(pl_module, "member_epoch_metrics"):
            self.levels_state.observe(pl_module.member_epoch_metrics("val"))

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.levels_state.due(trainer.current_epoch):
            self._finish_level(trainer, pl_module)
            self._start_level(trainer, pl_module, self.levels_state.level + 1)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.levels_state.unfinished(trainer.current_epoch, trainer.global_step):
            self._finish_level(trainer, pl_module)

    def _finish_level(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, rank0 = self.levels_state, trainer.global_rank == 0
        final = evaluate_splits(trainer, pl_module, self.opts.eval_splits)
        record, report, small = state.finish(pl_module, final, trainer.current_epoch, trainer.global_step,
                                             export=rank0)
        log_scalars(trainer, pruning.level_scalars(record))
        if not rank0:
            return
        run, level = RunFolder.of(trainer), state.level
        if self.opts.save_final_weights:
            atomic_save(module_state(pl_module), run.imp_final(level))
        if small is not None:
            atomic_save(small.cpu(), run.imp_pruned_net(level))
        atomic_write_json(report, run.imp_sparsity(level))
        atomic_write_json(record, run.imp_metrics(level))
        summary = {"config": self.opts.config(state.epochs_per_level, state.steps_per_level),
                   "levels": state.history}
        atomic_write_json(summary, run.imp_summary)

    def _start_level(self, trainer: L.Trainer, pl_module: L.LightningModule, level: int) -> None:
        state = self.levels_state
        proposal = state.proposal(pl_module, level, compute=trainer.global_rank == 0)
        if state.keep is not None:
            state.keep = {k: v.cpu() for k, v in broadcast_masks(trainer, state.keep).items()}
        masks = broadcast_masks(trainer, proposal)
        start = state.rewind_(pl_module, self.opts)
        state.advance(masks)
        self._bind(pl_module)  # applies the new masks to the weights
        if self.opts.rewind == "finetune":
            for opt in trainer.optimizers:
                self._bound.mask_optimizer_state_(opt)
            trainer.strategy.lr_scheduler_configs = []
        else:
            fresh_optimizers(trainer, pl_module)
        self._write_level_start(trainer, level, start)

    def _write_level_start(self, trainer: L.Trainer, level: int, start: dict[str, Tensor]) -> None:
        if trainer.global_rank == 0:
            run = RunFolder.of(trainer)
            pruning.Masks(self.levels_state.masks).save(run.imp_mask(level))
            atomic_save(start, run.imp_rewind(level))

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.levels_state.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.levels_state.load_state_dict(state_dict)

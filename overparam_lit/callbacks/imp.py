"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020;
Renda et al. 2020), as a Lightning callback; ticket starts are in :mod:`.ticket`.

The callbacks are thin adapters: the pruning itself lives in :mod:`overparam_lit.pruning`.
Masks are boolean tensors keyed by parameter name; a masked model is the plain model with
zeros in it, so ``state_dict`` keys never change. The gradients of pruned entries are zeroed
before every optimizer step (momentum and Adam moments of pruned entries stay zero) and the
weights are multiplied by the masks after every step (weight decay or any other optimizer
cannot revive them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from overparam_lit import pruning
from overparam_lit.callbacks.masked import MaskedTraining, broadcast_masks, evaluate_splits, module_state
from overparam_lit.utils import (
    ConfigError,
    atomic_save,
    atomic_write_json,
    check,
    log_scalars,
    run_dir,
)

REWIND_MODES = ("weights", "lr", "finetune")
GRANULARITIES = ("unstructured", "structured")


class IterativeMagnitudePruning(MaskedTraining):
    """Iterative magnitude pruning with rewinding, all levels in one ``fit``.

    Level 0 trains the dense net for ``epochs_per_level`` epochs. Each further level prunes
    ``fraction`` of the remaining prunable weights by magnitude, rewinds, and retrains the full
    schedule with a fresh optimizer and LR scheduler (``configure_optimizers()`` again). The
    callback sets ``max_epochs = (levels + 1) * epochs_per_level`` itself. At the end of each
    level it logs ``imp/level``, ``imp/density``, ``imp/sparsity`` and ``imp/<split>_acc`` /
    ``imp/<split>_loss`` (level-wise series), and writes under ``<run_dir>/imp/level_XX/``:
    ``mask.pt``, ``rewind.pt`` (dense state the level started from, before masking: a ticket),
    ``final.pt``, ``sparsity.json``, ``metrics.json``; ``imp/summary.json`` lists every level.

    Args:
        levels: number of pruning levels after the dense level 0 (>= 1); level L keeps
            ``(1 - fraction) ** L`` of the prunable weights.
        fraction: fraction of the remaining prunable weights pruned per level, in (0, 1).
        epochs_per_level: epochs of one level; ``None`` takes the trainer's ``max_epochs``.
        scope: ``global`` (one magnitude threshold across layers) or ``layerwise``.
        rewind: ``weights`` (to global step ``rewind_step`` of level 0; 0 is the original
            lottery ticket), ``lr`` (keep the trained weights, replay the LR schedule) or
            ``finetune`` (keep weights and optimizer, train on at the final learning rate).
        rewind_step: optimizer step of level 0 whose state is the rewind point.
        output_fraction: per-level pruning fraction of the output layer (own rate, layerwise);
            0 leaves the output layer dense.
        output_layer: module name of the output layer (default: the last Linear/Conv layer).
        granularity: ``unstructured`` (single weights) or ``structured`` (whole neurons and
            channels by norm, coupled through torch-pruning's dependency graph; each level
            also exports the physically smaller net to ``pruned_net.pt``).
        eval_splits: splits evaluated at the end of each level for the level-wise metrics.
        save_final_weights: write ``final.pt`` per level.
    """

    def __init__(
        self,
        levels: int = 3,
        fraction: float = 0.2,
        epochs_per_level: int | None = None,
        scope: str = "global",
        rewind: str = "weights",
        rewind_step: int = 0,
        output_fraction: float = 0.0,
        output_layer: str | None = None,
        granularity: str = "unstructured",
        eval_splits: Sequence[str] = ("val", "test"),
        save_final_weights: bool = True,
    ) -> None:
        super().__init__()
        check(isinstance(levels, int) and levels >= 1, "IMP levels must be an integer >= 1", levels,
              "Set levels to the number of pruning rounds after the dense level 0, e.g. 3.")
        check(isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0,
              "IMP fraction must lie strictly between 0 and 1", fraction,
              "Set fraction to the share of remaining weights pruned per level, e.g. 0.2.")
        check(epochs_per_level is None or (isinstance(epochs_per_level, int) and epochs_per_level >= 1),
              "epochs_per_level must be a positive integer or null", epochs_per_level,
              "Set epochs_per_level, or leave it null to use trainer.max_epochs per level.")
        check(scope in pruning.SCOPES, "unknown IMP scope", scope, f"Use one of {pruning.SCOPES}.")
        check(rewind in REWIND_MODES, "unknown IMP rewind mode", rewind, f"Use one of {REWIND_MODES}.")
        check(isinstance(rewind_step, int) and rewind_step >= 0, "rewind_step must be an integer >= 0",
              rewind_step, "Set rewind_step to an optimizer step of level 0 (0 = initialisation).")
        check(rewind == "weights" or rewind_step == 0, "rewind_step only applies to rewind mode 'weights'",
              (rewind, rewind_step), "Set rewind_step: 0 or rewind: weights.")
        check(0.0 <= output_fraction < 1.0, "output_fraction must lie in [0, 1)", output_fraction,
              "Use 0 to keep the output layer dense, or e.g. 0.1 (half the rate of 0.2).")
        check(granularity in GRANULARITIES, "unknown IMP granularity", granularity,
              f"Use one of {GRANULARITIES}.")
        check(all(s in ("train", "val", "test") for s in eval_splits), "unknown split in eval_splits",
              list(eval_splits), "Use a subset of ['train', 'val', 'test'].")
        self.levels, self.fraction = int(levels), float(fraction)
        self.epochs_per_level = epochs_per_level
        self.scope, self.rewind, self.rewind_step = scope, rewind, int(rewind_step)
        self.output_fraction, self.output_layer = float(output_fraction), output_layer
        self.granularity, self.eval_splits = granularity, tuple(eval_splits)
        self.save_final_weights = save_final_weights
        # state (in the checkpoint)
        self.level = 0
        self.keep: dict[str, Tensor] | None = None  # structured: kept channels per group
        self.snapshot: dict[str, Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self._epl: int | None = None
        self._prunable: dict[str, pruning.PrunableWeight] = {}
        self._groups: list[pruning.ChannelGroup] = []

    # ---- configuration ------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        """``(levels + 1) * epochs_per_level`` once resolved in ``setup``."""
        assert self._epl is not None
        return (self.levels + 1) * self._epl

    def _net_and_prefix(self, pl_module: L.LightningModule) -> tuple[torch.nn.Module, str]:
        net = getattr(pl_module, "net", None)
        return (net, "net.") if isinstance(net, torch.nn.Module) else (pl_module, "")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._epl is None:
            if self.epochs_per_level is None:
                check(trainer.max_epochs is not None and trainer.max_epochs >= 1,
                      "IMP needs the epochs of one level: trainer.max_epochs is unset", trainer.max_epochs,
                      "Set trainer.max_epochs (epochs per level) or the callback's epochs_per_level.")
                self._epl = int(trainer.max_epochs)
            else:
                self._epl = int(self.epochs_per_level)
                if trainer.max_epochs not in (None, -1, self._epl, self.total_epochs):
                    rank_zero_info(f"IMP sets max_epochs to {self.total_epochs} "
                                   f"({self.levels + 1} levels x {self._epl} epochs).")
        check(trainer.max_steps in (None, -1), "IMP runs whole levels, but trainer.max_steps is set",
              trainer.max_steps, "Remove trainer.max_steps; IMP sets max_epochs = levels x epochs.")
        trainer.fit_loop.max_epochs = self.total_epochs
        net, prefix = self._net_and_prefix(pl_module)
        include_out = self.output_fraction > 0
        out_name = self.output_layer
        if out_name is None:
            out_name = pruning.output_layer_name(net)
            out_full = None if out_name is None else prefix + out_name
        else:
            out_full = out_name
            check(out_full in dict(pl_module.named_modules()), "output_layer is not a module of the model",
                  out_full, "Give its name in model.named_modules(), e.g. 'net.5'.")
        weights = pruning.prunable_weights(pl_module, include_output=include_out, output_layer=out_full)
        check(len(weights) > 0, "the model has no prunable weights (Linear/Conv weights)",
              type(pl_module).__name__, "IMP prunes Linear and Conv layers; use a model that has some.")
        self._prunable = {w.name: w for w in weights}
        if self.granularity == "structured":
            shape = getattr(pl_module, "input_shape", None)
            check(shape is not None, "structured IMP needs the model's input_shape to trace the graph",
                  type(pl_module).__name__, "Use an OverparamModule (it has input_shape).")
            check(out_full is not None and out_full.startswith(prefix),
                  "structured IMP needs the output layer inside the network", out_full, "Set output_layer.")
            example = torch.zeros(1, *shape, device=pl_module.device)
            try:
                self._groups = pruning.channel_groups(net, example, out_full[len(prefix):], prefix=prefix)
            except ValueError as err:
                raise ConfigError(f"structured IMP cannot prune this model: {err}") from err
            check(len(self._groups) > 0, "the model has no prunable neuron or channel groups",
                  type(pl_module).__name__, "Use granularity 'unstructured' or a model with hidden layers.")
        if self.masks is None:
            params = dict(pl_module.named_parameters())
            if self.granularity == "structured":
                self.keep = {g.root: torch.ones(g.size, dtype=torch.bool) for g in self._groups}
                self.masks = pruning.group_masks(self._groups, params, self.keep)
            else:
                self.masks = pruning.full_masks({n: params[n] for n in self._prunable})

    def _weight_masks(self) -> dict[str, Tensor]:
        """Masks of the prunable weights only (what densities are reported over)."""
        assert self.masks is not None
        return {n: m for n, m in self.masks.items() if n in self._prunable}

    def _level_dir(self, trainer: L.Trainer, level: int):
        return run_dir(trainer) / "imp" / f"level_{level:02d}"

    # ---- training hooks -----------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a restored callback state (resume) fixes the per-level epochs
        trainer.fit_loop.max_epochs = self.total_epochs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = trainer.num_training_batches
        if steps != float("inf"):
            per_level = self._epl * -(-int(steps) // max(1, trainer.accumulate_grad_batches))
            check(self.rewind_step <= per_level, "rewind_step is past the end of a level", self.rewind_step,
                  f"A level has {per_level} optimizer steps; choose rewind_step <= {per_level}.")
        if self.rewind == "finetune" and self.level >= 1:
            trainer.strategy.lr_scheduler_configs = []  # resumed: keep the final learning rate
        self._bind(pl_module)
        if self.level == 0 and trainer.global_step == 0:
            if self.rewind_step == 0 and self.snapshot is None:
                self.snapshot = module_state(pl_module)
            self._write_level_start(trainer, pl_module, 0, module_state(pl_module))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (self.level == 0 and self.snapshot is None and self.rewind == "weights"
                and trainer.global_step == self.rewind_step):
            self.snapshot = module_state(pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = trainer.current_epoch // self._epl
        if target > self.level:
            self._finish_level(trainer, pl_module)
            self._start_level(trainer, pl_module, self.level + 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = {h["level"] for h in self.history}
        if trainer.current_epoch >= (self.level + 1) * self._epl and self.level not in done:
            self._finish_level(trainer, pl_module)

    # ---- levels -------------------------------------------------------------------------
    def _finish_level(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics: dict[str, float] = {}
        for split in self.eval_splits:
            metrics.update(evaluate_splits(trainer, pl_module, split))
        wm = self._weight_masks()
        report = pruning.sparsity_report(wm)
        record: dict[str, Any] = {
            "level": self.level,
            "density": report["total"]["density"],
            "sparsity": report["total"]["sparsity"],
            "kept": report["total"]["kept"],
            "prunable": report["total"]["numel"],
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            **metrics,
        }
        self.history.append(record)
        log = {"imp/level": self.level, "imp/density": record["density"], "imp/sparsity": record["sparsity"]}
        log.update({f"imp/{k.replace('/', '_')}": v for k, v in metrics.items()})
        log_scalars(trainer, log)
        if trainer.global_rank != 0:
            return
        d = self._level_dir(trainer, self.level)
        if self.save_final_weights:
            atomic_save(module_state(pl_module), d / "final.pt")
        if self.granularity == "structured" and self.keep is not None:
            report["channels"] = pruning.channel_report(self._groups, self.keep)
            net, prefix = self._net_and_prefix(pl_module)
            example = torch.zeros(1, *pl_module.input_shape, device=pl_module.device)
            small = pruning.export_pruned(net, example, self.keep, prefix=prefix)
            record["exported_params"] = sum(p.numel() for p in small.parameters())
            atomic_save(small.cpu(), d / "pruned_net.pt")
        atomic_write_json(report, d / "sparsity.json")
        atomic_write_json(record, d / "metrics.json")
        atomic_write_json(self._summary(), run_dir(trainer) / "imp" / "summary.json")

    def _summary(self) -> dict[str, Any]:
        return {
            "config": {
                "levels": self.levels, "fraction": self.fraction, "epochs_per_level": self._epl,
                "scope": self.scope, "rewind": self.rewind, "rewind_step": self.rewind_step,
                "output_fraction": self.output_fraction, "granularity": self.granularity,
            },
            "levels": self.history,
        }

    def _new_masks(self, pl_module: L.LightningModule, level: int) -> dict[str, Tensor]:
        assert self.masks is not None
        params = dict(pl_module.named_parameters())
        target = (1.0 - self.fraction) ** level
        if self.granularity == "structured":
            self.keep = pruning.prune_channels(self._groups, params, self.keep, target, self.scope)
            return pruning.group_masks(self._groups, params, self.keep)
        own = {}
        if self.output_fraction > 0:
            own = {n: (1.0 - self.output_fraction) ** level for n, w in self._prunable.items() if w.is_output}
        weights = {n: params[n].detach() for n in self.masks}
        return pruning.magnitude_prune(weights, self.masks, target, self.scope, own_density=own)

    def _start_level(self, trainer: L.Trainer, pl_module: L.LightningModule, level: int) -> None:
        masks = self._new_masks(pl_module, level) if trainer.global_rank == 0 else dict(self.masks)
        if self.granularity == "structured":
            keep = {k: v.to(trainer.strategy.root_device) for k, v in self.keep.items()}
            self.keep = {k: v.cpu() for k, v in broadcast_masks(trainer, keep).items()}
        self.masks = {n: m.cpu() for n, m in broadcast_masks(trainer, masks).items()}
        if self.rewind == "weights":
            check(self.snapshot is not None, "the rewind step was never reached in level 0",
                  self.rewind_step, "Choose a rewind_step within the first level.")
            start = self.snapshot
            pruning.load_state_(pl_module, start)
        else:
            start = module_state(pl_module)
        self.level = level
        self._bind(pl_module)  # applies the new masks to the weights
        if self.rewind == "finetune":
            for opt in trainer.optimizers:
                pruning.mask_optimizer_state_(opt, self._params, self._fmasks)
            trainer.strategy.lr_scheduler_configs = []
        else:
            optimizers, schedulers = _init_optimizers_and_lr_schedulers(pl_module)
            trainer.strategy.optimizers = optimizers
            trainer.strategy.lr_scheduler_configs = schedulers
        self._write_level_start(trainer, pl_module, level, start)

    def _write_level_start(self, trainer: L.Trainer, pl_module: L.LightningModule, level: int,
                           start: dict[str, Tensor]) -> None:
        if trainer.global_rank != 0:
            return
        d = self._level_dir(trainer, level)
        atomic_save({n: m.cpu() for n, m in self.masks.items()}, d / "mask.pt")
        atomic_save(start, d / "rewind.pt")

    # ---- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "masks": None if self.masks is None else {n: m.cpu() for n, m in self.masks.items()},
            "keep": self.keep,
            "snapshot": self.snapshot,
            "history": self.history,
            "epochs_per_level": self._epl,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.level = int(state_dict["level"])
        self.masks = state_dict["masks"]
        self.keep = state_dict["keep"]
        self.snapshot = state_dict["snapshot"]
        self.history = list(state_dict["history"])
        if state_dict.get("epochs_per_level") is not None:
            self._epl = int(state_dict["epochs_per_level"])

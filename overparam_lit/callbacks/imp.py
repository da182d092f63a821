"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020;
Renda et al. 2020) as a Lightning callback; ticket starts are in :mod:`.ticket`.

The callback schedules; :class:`overparam_lit.pruning.ImpLevels` keeps the level state and
:mod:`overparam_lit.pruning` does the pruning. Members of a stacked fit are pruned each by its
own magnitudes, and every level artifact lists every member.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from overparam_lit import pruning
from overparam_lit.callbacks.masked import MaskedTraining, broadcast_masks, evaluate_members, module_state
from overparam_lit.compat import fresh_optimizers
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import ConfigError, atomic_save, atomic_write_json, check, log_scalars

REWIND_MODES = ("weights", "lr", "finetune")
GRANULARITIES = ("unstructured", "structured")


class IterativeMagnitudePruning(MaskedTraining):
    """Iterative magnitude pruning with rewinding, all levels in one ``fit``.

    Level 0 trains the dense net for ``epochs_per_level`` epochs. Each further level prunes to the
    schedule's density by magnitude, rewinds, and retrains the full schedule with a fresh optimizer
    and LR scheduler. The callback sets ``max_epochs = (levels + 1) * epochs_per_level``. At the
    end of each level it logs ``imp/level``, ``imp/density``, ``imp/sparsity`` and
    ``imp/<split>_acc`` / ``imp/<split>_loss`` (final) and ``imp/best_val_acc`` (best validation
    during the level), means over members, and writes ``<run_dir>/imp/level_XX/``: ``mask.pt``,
    ``rewind.pt`` (the dense state the level started from: a ticket), ``final.pt``,
    ``sparsity.json``, ``metrics.json``; ``imp/summary.json`` lists every level and member.

    Args:
        levels: pruning levels after the dense level 0 (>= 1).
        fraction: ``geometric`` schedule: fraction of the remaining weights pruned per level.
        schedule: ``geometric``, ``linear`` (sparsity linear in the level, to ``final_density``) or
            ``list`` (``densities`` of levels 1..levels).
        final_density: density of the last level of the ``linear`` schedule.
        densities: densities of the ``list`` schedule.
        epochs_per_level: epochs of one level; ``None`` takes the trainer's ``max_epochs``.
        scope: ``global`` (one threshold across layers, per member) or ``layerwise``.
        rewind: ``weights`` (to step ``rewind_step`` of level 0; 0 is the original lottery ticket),
            ``lr`` (keep the trained weights, replay the LR schedule) or ``finetune``.
        rewind_step: optimizer step of level 0 whose state is the rewind point.
        output_fraction: per-level pruning fraction of the output layer (own rate); 0 keeps it dense.
        output_layer: module name of the output layer (default: the last Linear/Conv layer).
        prune_biases: also prune the Linear/Conv biases, in the same pool as the weights.
        granularity: ``unstructured`` or ``structured`` (whole neurons and channels through
            torch-pruning's dependency graph; single models only; exports ``pruned_net.pt``).
        eval_splits: splits evaluated at the end of each level.
        save_final_weights: write ``final.pt`` per level.
    """

    def __init__(self, levels: int = 3, fraction: float = 0.2, schedule: str = "geometric",
                 final_density: float | None = None, densities: Sequence[float] | None = None,
                 epochs_per_level: int | None = None, scope: str = "global", rewind: str = "weights",
                 rewind_step: int = 0, output_fraction: float = 0.0, output_layer: str | None = None,
                 prune_biases: bool = False, granularity: str = "unstructured",
                 eval_splits: Sequence[str] = ("val", "test"), save_final_weights: bool = True) -> None:
        self.levels_state: pruning.ImpLevels | None = None
        super().__init__()
        self.schedule = pruning.SparsitySchedule(
            levels if densities is None else len(densities), schedule, fraction, final_density,
            None if densities is None else tuple(densities))
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
        self.levels = self.schedule.levels
        self.epochs_per_level, self.scope, self.rewind = epochs_per_level, scope, rewind
        self.rewind_step, self.output_fraction = int(rewind_step), output_fraction
        self.output_layer = output_layer
        self.prune_biases, self.granularity = prune_biases, granularity
        self.eval_splits, self.save_final_weights = tuple(eval_splits), save_final_weights
        self._epl: int | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def masks(self) -> dict[str, Tensor] | None:
        """The current masks (``None`` before setup)."""
        return None if self.levels_state is None else self.levels_state.masks

    @masks.setter
    def masks(self, value: dict[str, Tensor] | None) -> None:
        if self.levels_state is not None:
            self.levels_state.masks = value

    @property
    def level(self) -> int:
        """The current level (0 is dense)."""
        return 0 if self.levels_state is None else self.levels_state.level

    @property
    def history(self) -> list[dict[str, Any]]:
        """The records of finished levels (``summary.json``'s ``levels``)."""
        return [] if self.levels_state is None else self.levels_state.history

    @property
    def snapshot(self) -> dict[str, Tensor] | None:
        """The rewind point (the state of level 0 at ``rewind_step``), once reached."""
        return None if self.levels_state is None else self.levels_state.snapshot

    @property
    def total_epochs(self) -> int:
        """``(levels + 1) * epochs_per_level`` once resolved in ``setup``."""
        assert self._epl is not None
        return (self.levels + 1) * self._epl

    # ---- configuration ------------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._epl is None:
            epl = self.epochs_per_level if self.epochs_per_level is not None else trainer.max_epochs
            check(epl is not None and epl >= 1,
                  "IMP needs the epochs of one level: trainer.max_epochs is unset", trainer.max_epochs,
                  "Set trainer.max_epochs (epochs per level) or the callback's epochs_per_level.")
            self._epl = int(epl)
            if trainer.max_epochs not in (None, -1, self._epl, self.total_epochs):
                rank_zero_info(f"IMP sets max_epochs to {self.total_epochs} "
                               f"({self.levels + 1} levels x {self._epl} epochs).")
        check(trainer.max_steps in (None, -1), "IMP runs whole levels, but trainer.max_steps is set",
              trainer.max_steps, "Remove trainer.max_steps; IMP sets max_epochs = levels x epochs.")
        trainer.fit_loop.max_epochs = self.total_epochs
        if self.levels_state is None:
            self.levels_state = self._make_levels(pl_module)
        if self._restored is not None:
            self.levels_state.load_state_dict(self._restored)

    def _make_levels(self, pl_module: L.LightningModule) -> pruning.ImpLevels:
        members = getattr(pl_module, "members", None)
        net = getattr(pl_module, "net", pl_module)
        prefix = "net." if net is not pl_module else ""
        out_name = self.output_layer
        if out_name is None:
            found = pruning.output_layer_name(net)
            out_name = None if found is None else prefix + found
        check(out_name is None or out_name in dict(pl_module.named_modules()),
              "output_layer is not a module of the model", out_name,
              "Give its name in model.named_modules(), e.g. 'net.5'.")
        weights = pruning.prunable_weights(pl_module, self.output_fraction > 0, out_name, self.prune_biases)
        check(len(weights) > 0, "the model has no prunable weights (Linear/Conv weights)",
              type(pl_module).__name__, "IMP prunes Linear and Conv layers; use a model that has some.")
        params = dict(pl_module.named_parameters())
        base = {prefix + n: m for n, m in (getattr(net, "structure", None) or {}).items()}
        levels = pruning.ImpLevels(
            self.schedule, self.scope, self.output_fraction, [w.name for w in weights if w.is_output],
            None if members is None else len(members), base, prunable=[w.name for w in weights])
        masked = {w.name: params[w.name] for w in weights}
        if self.granularity == "structured":
            check(members is None, "structured IMP prunes single models only", len(members or []),
                  "Use granularity 'unstructured' with members, or fit without --model.seeds/widths.")
            example = torch.zeros(1, *pl_module.input_shape, device=pl_module.device)
            try:
                levels.groups = pruning.channel_groups(net, example, out_name[len(prefix):], prefix=prefix)
            except (ValueError, TypeError) as err:
                raise ConfigError(f"structured IMP cannot prune this model: {err}") from err
            check(len(levels.groups) > 0, "the model has no prunable neuron or channel groups",
                  type(pl_module).__name__, "Use granularity 'unstructured' or a model with hidden layers.")
            masked = params
        levels.start(masked)
        prunable = {w.name: params[w.name] for w in weights}
        counts = [pruning.own_counts(prunable, base, i if members else None)
                  for i in range(len(members) if members else 1)]
        self.schedule.check_counts(counts, layerwise=self.scope == "layerwise")
        return levels

    # ---- training hooks -----------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.fit_loop.max_epochs = self.total_epochs  # a restored state fixes the epochs

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = trainer.num_training_batches
        if steps != float("inf"):
            per_level = self._epl * -(-int(steps) // max(1, trainer.accumulate_grad_batches))
            check(self.rewind_step <= per_level, "rewind_step is past the end of a level", self.rewind_step,
                  f"A level has {per_level} optimizer steps; choose rewind_step <= {per_level}.")
        state = self.levels_state
        if self.rewind == "finetune" and state.level >= 1:
            trainer.strategy.lr_scheduler_configs = []  # resumed: keep the final learning rate
        self._bind(pl_module)
        if state.level == 0 and trainer.global_step == 0:
            if self.rewind_step == 0 and state.snapshot is None:
                state.snapshot = module_state(pl_module)
            self._write_level_start(trainer, 0, module_state(pl_module))

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        state = self.levels_state
        if (state.level == 0 and state.snapshot is None and self.rewind == "weights"
                and trainer.global_step == self.rewind_step):
            state.snapshot = module_state(pl_module)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and hasattr(pl_module, "member_epoch_metrics"):
            self.levels_state.observe(pl_module.member_epoch_metrics("val"))

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch // self._epl > self.levels_state.level:
            self._finish_level(trainer, pl_module)
            self._start_level(trainer, pl_module, self.levels_state.level + 1)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        level = self.levels_state.level
        done = {h["level"] for h in self.levels_state.history}
        if trainer.current_epoch >= (level + 1) * self._epl and level not in done:
            self._finish_level(trainer, pl_module)

    # ---- levels -------------------------------------------------------------------------
    def _finish_level(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = self.levels_state
        final: dict[str, Tensor] = {}
        for split in self.eval_splits:
            final.update(evaluate_members(trainer, pl_module, split))
        rows = pl_module.member_rows() if hasattr(pl_module, "member_rows") else [{}]
        record = state.record(final, rows, trainer.current_epoch, trainer.global_step)
        log = {"imp/level": state.level, "imp/density": record["density"], "imp/sparsity": record["sparsity"]}
        log.update({f"imp/{k.replace('/', '_')}": record[k] for k in record
                    if "/" in k and isinstance(record[k], float)})
        log_scalars(trainer, log)
        if trainer.global_rank != 0:
            return
        run, level = RunFolder.of(trainer), state.level
        if self.save_final_weights:
            atomic_save(module_state(pl_module), run.imp_final(level))
        reports = state.reports()
        report: dict[str, Any] = reports[0] if len(reports) == 1 and state.num_members is None \
            else {"members": reports}
        if state.groups is not None:
            report["channels"] = pruning.channel_report(state.groups, state.keep)
            net = pl_module.net
            example = torch.zeros(1, *pl_module.input_shape, device=pl_module.device)
            small = pruning.export_pruned(net, example, state.keep, prefix="net.")
            record["exported_params"] = sum(p.numel() for p in small.parameters())
            atomic_save(small.cpu(), run.imp_pruned_net(level))
        atomic_write_json(report, run.imp_sparsity(level))
        atomic_write_json(record, run.imp_metrics(level))
        atomic_write_json({"config": self._config(), "levels": state.history}, run.imp_summary)

    def _config(self) -> dict[str, Any]:
        return {"levels": self.levels, "schedule": self.schedule.kind, "densities": self.schedule.all(),
                "fraction": self.schedule.fraction, "epochs_per_level": self._epl, "scope": self.scope,
                "rewind": self.rewind, "rewind_step": self.rewind_step,
                "output_fraction": self.output_fraction,
                "prune_biases": self.prune_biases, "granularity": self.granularity}

    def _start_level(self, trainer: L.Trainer, pl_module: L.LightningModule, level: int) -> None:
        state = self.levels_state
        params = dict(pl_module.named_parameters())
        names = list(state.masks)
        masks = state.next_masks({n: params[n].detach() for n in names}, level) \
            if trainer.global_rank == 0 else dict(state.masks)
        if state.keep is not None:
            keep = {k: v.to(trainer.strategy.root_device) for k, v in state.keep.items()}
            state.keep = {k: v.cpu() for k, v in broadcast_masks(trainer, keep).items()}
        masks = broadcast_masks(trainer, masks)
        if self.rewind == "weights":
            check(state.snapshot is not None, "the rewind step was never reached in level 0",
                  self.rewind_step, "Choose a rewind_step within the first level.")
            start = state.snapshot
            pruning.load_state_(pl_module, start)
        else:
            start = module_state(pl_module)
        state.advance(masks)
        self._bind(pl_module)  # applies the new masks to the weights
        if self.rewind == "finetune":
            for opt in trainer.optimizers:
                pruning.mask_optimizer_state_(opt, self._params, self._fmasks)
            trainer.strategy.lr_scheduler_configs = []
        else:
            fresh_optimizers(trainer, pl_module)
        self._write_level_start(trainer, level, start)

    def _write_level_start(self, trainer: L.Trainer, level: int, start: dict[str, Tensor]) -> None:
        if trainer.global_rank != 0:
            return
        run = RunFolder.of(trainer)
        atomic_save({n: m.cpu() for n, m in self.levels_state.masks.items()}, run.imp_mask(level))
        atomic_save(start, run.imp_rewind(level))

    # ---- checkpoint state ---------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        if self.levels_state is None:
            state = dict(self._restored or {})
        else:
            state = self.levels_state.state_dict()
        return {**state, "epochs_per_level": self._epl}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)
        if state_dict.get("epochs_per_level") is not None:
            self._epl = int(state_dict["epochs_per_level"])
        if self.levels_state is not None:
            self.levels_state.load_state_dict(state_dict)

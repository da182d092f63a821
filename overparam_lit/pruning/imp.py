"""The settings of an iterative-magnitude-pruning run (no Lightning).

:class:`ImpOptions` holds and checks the settings of a run. The rest of IMP lives beside it and
is importable from here too: :class:`ImpLevels` (:mod:`~overparam_lit.pruning.levels`) owns what
IMP remembers between levels, the masks, the rewind snapshot, the best accuracies and the level
records, and decides when a level ends and when the rewind point is reached;
:func:`imp_targets` (:mod:`~overparam_lit.pruning.targets`) finds what a model prunes (its
Linear/Conv weights, the output layer, a stack's structural masks) and :meth:`ImpLevels.attach`
starts the levels on a model. A Lightning callback only calls them at the right hooks and writes
files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from overparam_lit.pruning.levels import ImpLevels, best_accuracies, level_scalars
from overparam_lit.pruning.masks import SCOPES
from overparam_lit.pruning.schedule import SparsitySchedule
from overparam_lit.pruning.targets import ImpTargets, example_input, imp_targets
from overparam_lit.utils import check

__all__ = [
    "GRANULARITIES", "OUTPUT_MODES", "REWIND_MODES", "SPLITS", "ImpLevels", "ImpOptions", "ImpTargets",
    "best_accuracies", "example_input", "imp_targets", "level_scalars",
]

REWIND_MODES = ("weights", "lr", "finetune")
OUTPUT_MODES = ("dense", "schedule", "own")
GRANULARITIES = ("unstructured", "structured")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class ImpOptions:
    """The settings of an IMP run (the options of
    :class:`~overparam_lit.callbacks.imp.IterativeMagnitudePruning`), checked on construction.

    :attr:`sparsity` is the :class:`SparsitySchedule` they describe; with ``densities`` its number
    of levels is the number of densities. :attr:`output_mode` is ``output`` resolved (unset: ``own``
    when ``output_fraction`` > 0, else ``dense``).

    Args:
        levels: pruning levels after the dense level 0 (>= 1).
        fraction: ``geometric`` schedule: fraction of the remaining weights pruned per level.
        schedule: ``geometric``, ``linear`` (sparsity linear in the level, to ``final_density``) or
            ``list`` (``densities`` of levels 1..levels).
        final_density: density of the last level of the ``linear`` schedule.
        densities: densities of the ``list`` schedule.
        epochs_per_level: epochs of one level; ``None`` takes the trainer's ``max_epochs`` (or,
            when the trainer sets ``max_steps``, levels are measured in steps of that many).
        scope: ``global`` (one threshold across layers, per member) or ``layerwise`` (one per layer,
            or per pool with ``pool_bias``).
        rewind: ``weights`` (to step ``rewind_step`` of level 0; 0 is the original lottery ticket),
            ``lr`` (keep the trained weights, replay the LR schedule) or ``finetune``.
        rewind_step: optimizer step of level 0 whose state is the rewind point.
        output_fraction: per-level pruning fraction of the output layer (own geometric rate,
            ``(1 - output_fraction) ** level`` under any schedule); 0 keeps it dense.
        output_layer: module name of the output layer (default: the last Linear/Conv layer).
        prune_biases: also prune the Linear/Conv biases by magnitude: with ``scope: global`` in the
            one pool; with ``layerwise`` each bias as a tensor of its own (see ``pool_bias``).
        pool_bias: prune each layer's weight and bias as one pool (one threshold over both; needs
            ``prune_biases``), as the MNIST-1D notebook prunes a layer's parameters.
        granularity: ``unstructured`` or ``structured`` (whole neurons and channels through
            torch-pruning's dependency graph; single models only; exports ``pruned_net.pt``).
        eval_splits: splits evaluated at the end of each level.
        save_final_weights: write ``final.pt`` per level.
        output: what happens to the output layer: ``dense`` (kept), ``schedule`` (pruned like
            every other layer: in the global pool, or as a layer of its own under ``layerwise``)
            or ``own`` (its own rate: ``output_fraction`` or ``output_final_density``). Unset:
            ``own`` when ``output_fraction`` > 0, else ``dense``.
        output_final_density: the output layer's own rate, linear in the level: its density falls
            from 1 to this value at the last level (with ``output: own``, any schedule).
        steps_per_level: optimizer steps of one level (levels in steps; the callback sets
            ``max_steps``); validation every N steps is Lightning's ``val_check_interval: N`` with
            ``check_val_every_n_epoch: null``.
        replay_order: every level sees the training batches in the order level 0 saw them (the
            data module's :meth:`~overparam_lit.data.base.ArrayDataModule.replay_order`); by
            default the order is drawn per epoch of the whole fit.
    """

    levels: int = 3
    fraction: float = 0.2
    schedule: str = "geometric"
    final_density: float | None = None
    densities: Sequence[float] | None = None
    epochs_per_level: int | None = None
    scope: str = "global"
    rewind: str = "weights"
    rewind_step: int = 0
    output_fraction: float = 0.0
    output_layer: str | None = None
    prune_biases: bool = False
    granularity: str = "unstructured"
    eval_splits: Sequence[str] = ("val", "test")
    save_final_weights: bool = True
    pool_bias: bool = False
    output: str | None = None
    output_final_density: float | None = None
    steps_per_level: int | None = None
    replay_order: bool = False
    sparsity: SparsitySchedule = field(init=False, repr=False)
    output_mode: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        dens = None if self.densities is None else tuple(self.densities)
        object.__setattr__(self, "densities", dens)
        levels = self.levels if dens is None else len(dens)
        sparsity = SparsitySchedule(levels, self.schedule, self.fraction, self.final_density, dens)
        object.__setattr__(self, "sparsity", sparsity)
        epl, rewind, step = self.epochs_per_level, self.rewind, self.rewind_step
        check(epl is None or (isinstance(epl, int) and epl >= 1),
              "epochs_per_level must be a positive integer or null", epl,
              "Set epochs_per_level, or leave it null to use trainer.max_epochs per level.")
        check(self.scope in SCOPES, "unknown IMP scope", self.scope, f"Use one of {SCOPES}.")
        check(rewind in REWIND_MODES, "unknown IMP rewind mode", rewind, f"Use one of {REWIND_MODES}.")
        check(isinstance(step, int) and step >= 0, "rewind_step must be an integer >= 0",
              step, "Set rewind_step to an optimizer step of level 0 (0 = initialisation).")
        check(rewind == "weights" or step == 0, "rewind_step only applies to rewind mode 'weights'",
              (rewind, step), "Set rewind_step: 0 or rewind: weights.")
        check(0.0 <= self.output_fraction < 1.0, "output_fraction must lie in [0, 1)", self.output_fraction,
              "Use 0 to keep the output layer dense, or e.g. 0.1 (half the rate of 0.2).")
        check(self.granularity in GRANULARITIES, "unknown IMP granularity", self.granularity,
              f"Use one of {GRANULARITIES}.")
        check(all(s in SPLITS for s in self.eval_splits), "unknown split in eval_splits",
              list(self.eval_splits), "Use a subset of ['train', 'val', 'test'].")
        object.__setattr__(self, "rewind_step", int(step))
        object.__setattr__(self, "eval_splits", tuple(self.eval_splits))
        self._check_protocol()

    def _check_protocol(self) -> None:
        """Check the options that write a published protocol down: pooled biases, the output
        layer's schedule, levels in steps."""
        spl, out, ofd = self.steps_per_level, self.output, self.output_final_density
        check(spl is None or (isinstance(spl, int) and not isinstance(spl, bool) and spl >= 1),
              "steps_per_level must be a positive integer or null", spl,
              "Set steps_per_level to the optimizer steps of one level, e.g. 1500, or leave it null.")
        check(spl is None or self.epochs_per_level is None,
              "a level is measured in epochs or in steps, not both", (self.epochs_per_level, spl),
              "Set only one of epochs_per_level and steps_per_level.")
        check(not self.pool_bias or self.prune_biases, "pool_bias needs prune_biases: true", self.pool_bias,
              "Set prune_biases: true to prune each layer's bias in one pool with its weight.")
        check(out is None or out in OUTPUT_MODES, "unknown output layer mode", out,
              f"Use one of {OUTPUT_MODES} (dense: kept; schedule: pruned like the other layers; own: "
              "its own rate, output_fraction or output_final_density).")
        check(ofd is None or (isinstance(ofd, (int, float)) and 0.0 < ofd < 1.0),
              "output_final_density must lie strictly between 0 and 1", ofd,
              "Set it to the output layer's density at the last level, e.g. 0.2, or leave it null.")
        own_rates = int(self.output_fraction > 0) + int(ofd is not None)
        mode = out if out is not None else ("own" if own_rates else "dense")
        check(mode == "own" or own_rates == 0, f"output: {mode} takes no own rate of the output layer",
              (self.output_fraction, ofd), "Remove output_fraction/output_final_density, or set output: own.")
        check(mode != "own" or own_rates == 1, "output: own needs exactly one own rate of the output layer",
              (self.output_fraction, ofd), "Set output_fraction (geometric, per level) or "
              "output_final_density (linear in the level), not both.")
        check(self.granularity == "unstructured" or (mode == "dense" and not self.pool_bias),
              "structured IMP keeps the output layer and the biases", (mode, self.pool_bias),
              "Use granularity: unstructured, or output: dense and pool_bias: false.")
        object.__setattr__(self, "output_mode", mode)

    def output_density(self, level: int) -> float | None:
        """The output layer's own density at ``level`` (``None`` unless ``output_mode`` is ``own``):
        ``(1 - output_fraction) ** level``, or linear in the level to ``output_final_density``."""
        if self.output_mode != "own":
            return None
        if self.output_final_density is not None:
            return 1.0 - (1.0 - self.output_final_density) * level / self.sparsity.levels
        return (1.0 - self.output_fraction) ** level

    def config(self, epochs_per_level: int | None, steps_per_level: int | None = None) -> dict[str, Any]:
        """``summary.json``'s ``config`` (the length of a level as resolved for the fit)."""
        sched = self.sparsity
        return {"levels": sched.levels, "schedule": sched.kind, "densities": sched.all(),
                "fraction": sched.fraction, "epochs_per_level": epochs_per_level,
                "steps_per_level": steps_per_level, "scope": self.scope,
                "rewind": self.rewind, "rewind_step": self.rewind_step, "output": self.output_mode,
                "output_fraction": self.output_fraction, "output_final_density": self.output_final_density,
                "output_densities": [self.output_density(lv) for lv in range(sched.levels + 1)]
                if self.output_mode == "own" else None,
                "prune_biases": self.prune_biases, "pool_bias": self.pool_bias,
                "replay_order": self.replay_order, "granularity": self.granularity}

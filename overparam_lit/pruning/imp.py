"""The state of an iterative-magnitude-pruning run, level by level (no Lightning).

:class:`ImpOptions` holds and checks the settings of a run. :class:`ImpLevels` owns what IMP
remembers between levels: the current level, the masks, the rewind snapshot, the best validation
accuracy seen during the level, and the level records that ``summary.json`` lists; it decides
when a level ends and when the rewind point is reached. :func:`imp_targets` finds what a model
prunes (its Linear/Conv weights, the output layer, a stack's structural masks) and
:meth:`ImpLevels.attach` starts the levels on a model. A Lightning callback only calls them at
the right hooks and writes files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from overparam_lit.protocols import network_of
from overparam_lit.pruning.binding import Masks, structural_masks
from overparam_lit.pruning.masks import SCOPES, pool_lists
from overparam_lit.pruning.members import initial_masks, member_reports, own_counts, prune_members
from overparam_lit.pruning.schedule import SparsitySchedule
from overparam_lit.pruning.select import PrunableWeight, output_layer_name, prunable_weights
from overparam_lit.pruning.tickets import load_state_, module_state
from overparam_lit.utils import ConfigError, check

if TYPE_CHECKING:  # torch-pruning loads with the first structured run, not with the options
    from overparam_lit.pruning.structured import ChannelGroup

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


@dataclass
class ImpTargets:
    """What IMP prunes in a model.

    Attributes:
        weights: the prunable tensors (names as in ``module.named_parameters()``).
        output_layer: module name of the output layer (``None``: the model has none).
        prefix: ``"net."`` when the model keeps its network in ``.net``, else ``""``.
        base: a stack's structural masks (empty for a single model or equal widths).
        num_members: ``M`` for a stack, ``None`` for a single model.
    """

    weights: list[PrunableWeight]
    output_layer: str | None
    prefix: str
    base: Masks
    num_members: int | None


def imp_targets(module: nn.Module, output_layer: str | None = None, include_output: bool = True,
                include_bias: bool = False) -> ImpTargets:
    """The prunable weights, output layer and structural masks of ``module`` (a model that keeps
    its network in ``.net``, such as an ``OverparamModule``, or a plain network).

    Raises :class:`ConfigError` when ``output_layer`` is not a module of the model, or when the
    model has no prunable weight.
    """
    members = getattr(module, "members", None)
    net = network_of(module)
    prefix = "net." if net is not module else ""
    out_name = output_layer
    if out_name is None:
        found = output_layer_name(net)
        out_name = None if found is None else prefix + found
    check(out_name is None or out_name in dict(module.named_modules()),
          "output_layer is not a module of the model", out_name,
          "Give its name in model.named_modules(), e.g. 'net.5'.")
    weights = prunable_weights(module, include_output, out_name, include_bias)
    check(len(weights) > 0, "the model has no prunable weights (Linear/Conv weights)",
          type(module).__name__, "IMP prunes Linear and Conv layers; use a model that has some.")
    return ImpTargets(weights, out_name, prefix, structural_masks(module),
                      None if members is None else len(members))


def example_input(module: nn.Module) -> Tensor:
    """A zero batch of one input of ``module.input_shape`` on the module's device."""
    return torch.zeros(1, *module.input_shape, device=next(module.parameters()).device)


def level_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars logged at the end of a level: ``imp/level``, ``imp/density``, ``imp/sparsity``
    and every ``<split>/<metric>`` of the record as ``imp/<split>_<metric>``."""
    log = {"imp/level": record["level"], "imp/density": record["density"], "imp/sparsity": record["sparsity"]}
    log.update({f"imp/{k.replace('/', '_')}": record[k] for k in record
                if "/" in k and isinstance(record[k], float)})
    return log


def best_accuracies(best: Mapping[str, list[float]], metrics: Mapping[str, Tensor]) -> dict[str, list[float]]:
    """``best`` updated with every ``*/acc`` of ``metrics`` (one value per member): the largest
    value seen so far, per member."""
    out = dict(best)
    for key, values in metrics.items():
        if not key.endswith("/acc"):
            continue
        vals = [float(v) for v in torch.as_tensor(values).reshape(-1)]
        old = out.get(key)
        out[key] = vals if old is None else [max(a, b) for a, b in zip(old, vals, strict=True)]
    return out


@dataclass
class ImpLevels:
    """Level bookkeeping of IMP for a single model or a stack of ``num_members`` members.

    Args:
        schedule: densities per level.
        scope: ``global`` or ``layerwise``.
        output_fraction: per-level pruning fraction of the output layer (own rate); 0 keeps it.
        output_names: names of the output layer's prunable tensors.
        num_members: ``M`` for a stack, ``None`` for a single model.
        base: structural masks of a stack's padded members (densities count only their entries).
        prunable: names the densities are counted over (default: every masked tensor).
        groups: channel groups for structured pruning (single models): whole neurons and channels
            are pruned by norm, and :attr:`keep` holds the kept channels of every group.
        epochs_per_level: epochs of one level (:meth:`resolve_epochs`).
        own_output: the output layer's own densities at levels ``0..levels`` (instead of
            ``output_fraction``'s geometric rate).
        pools: a pool name per pruned tensor: tensors of one pool share one threshold (a layer's
            weight and bias with ``pool_bias``); ``None``: every tensor on its own.
        steps_per_level: optimizer steps of one level, when levels are measured in steps.

    A model's names, members, structural masks and groups are filled in by :meth:`attach`.
    """

    schedule: SparsitySchedule
    scope: str = "global"
    output_fraction: float = 0.0
    output_names: Sequence[str] = ()
    num_members: int | None = None
    base: Mapping[str, Tensor] | None = None
    prunable: Sequence[str] | None = None
    groups: list[ChannelGroup] | None = None
    keep: dict[str, Tensor] | None = None
    level: int = 0
    masks: dict[str, Tensor] | None = None
    snapshot: dict[str, Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, list[float]] = field(default_factory=dict)
    epochs_per_level: int | None = None
    own_output: tuple[float, ...] | None = None
    pools: dict[str, str] | None = None
    steps_per_level: int | None = None

    @classmethod
    def from_options(cls, opts: ImpOptions) -> ImpLevels:
        """Levels of IMP with ``opts``, not yet attached to a model (:meth:`attach`)."""
        own = None
        if opts.output_mode == "own":
            own = tuple(float(opts.output_density(lv)) for lv in range(opts.sparsity.levels + 1))
        return cls(opts.sparsity, opts.scope, 0.0, own_output=own)

    def attach(self, module: nn.Module, opts: ImpOptions) -> None:
        """Find what IMP prunes in ``module`` and start (density-1 masks, unless restored); a no-op
        once attached.

        Raises :class:`ConfigError` for a model IMP cannot prune with ``opts``: no prunable weight,
        a structured run of a stack or of a model without channel groups, or a schedule that keeps
        no weight of some member at its last level.
        """
        if self.prunable is not None:
            return
        targets = imp_targets(module, opts.output_layer, opts.output_mode != "dense", opts.prune_biases)
        members, base, params = targets.num_members, targets.base, dict(module.named_parameters())
        self.output_names = [w.name for w in targets.weights if w.is_output]
        if opts.pool_bias:
            self.pools = {w.name: w.module_name for w in targets.weights}
        self.num_members, self.base = members, base
        masked = {w.name: params[w.name] for w in targets.weights}
        if opts.granularity == "structured":
            check(members is None, "structured IMP prunes single models only", members or 0,
                  "Use granularity 'unstructured' with members, or prune a single model.")
            from overparam_lit.pruning.structured import channel_groups

            out, prefix = targets.output_layer, targets.prefix
            try:
                self.groups = channel_groups(network_of(module), example_input(module),
                                             out[len(prefix):], prefix=prefix)  # type: ignore[index]
            except (ValueError, TypeError) as err:
                raise ConfigError(f"structured IMP cannot prune this model: {err}") from err
            check(len(self.groups) > 0, "the model has no prunable neuron or channel groups",
                  type(module).__name__, "Use granularity 'unstructured' or a model with hidden layers.")
            masked = params
        self.start(masked)
        prunable = {w.name: params[w.name] for w in targets.weights}
        counts = [own_counts(prunable, base, i if members else None) for i in range(members or 1)]
        pooled = [{"+".join(p): sum(c[n] for n in p) for p in pool_lists(c, self.pools)} for c in counts]
        opts.sparsity.check_counts(pooled, layerwise=opts.scope == "layerwise")
        self.prunable = list(prunable)

    def pool_names(self) -> list[list[str]]:
        """The pools a level's densities are kept in (what random pruning draws within): the
        global pool or each layer's (weight, with ``pool_bias`` its bias), and the output layer
        when it has its own rate."""
        names = list(self.prunable or self.masks or [])
        own = set(self.own_densities(0))
        if self.scope == "global":
            main = [n for n in names if n not in own]
            return ([main] if main else []) + pool_lists([n for n in names if n in own], self.pools)
        return pool_lists(names, self.pools)

    def own_densities(self, level: int) -> dict[str, float]:
        """The output layer's tensors at their own density of ``level`` (empty when the output layer
        is kept dense or pruned on the main schedule)."""
        if self.own_output is not None:
            return {n: self.own_output[level] for n in self.output_names}
        if self.output_fraction > 0:
            return {n: (1.0 - self.output_fraction) ** level for n in self.output_names}
        return {}

    def resolve_epochs(self, max_epochs: int | None, max_steps: int | None, opts: ImpOptions) -> str | None:
        """Fix the length of one level, unless restored: ``opts.steps_per_level`` or, without
        ``epochs_per_level``, the trainer's ``max_steps`` (levels in optimizer steps); else
        ``opts.epochs_per_level`` or the trainer's ``max_epochs``. Returns a note when the fit's
        ``max_epochs``/``max_steps`` change."""
        if self.steps_per_level is None and self.epochs_per_level is None and (
                opts.steps_per_level is not None
                or (opts.epochs_per_level is None and max_steps not in (None, -1))):
            self.steps_per_level = int(opts.steps_per_level or max_steps)  # type: ignore[arg-type]
            if max_steps not in (None, -1, self.steps_per_level, self.total_steps):
                return (f"IMP sets max_steps to {self.total_steps} "
                        f"({self.schedule.levels + 1} levels x {self.steps_per_level} steps).")
            return None
        if self.steps_per_level is not None:
            return None
        note = None
        if self.epochs_per_level is None:
            epl = opts.epochs_per_level if opts.epochs_per_level is not None else max_epochs
            check(epl is not None and epl >= 1,
                  "IMP needs the epochs of one level: trainer.max_epochs is unset", max_epochs,
                  "Set trainer.max_epochs (epochs per level) or the callback's epochs_per_level.")
            self.epochs_per_level = int(epl)
            if max_epochs not in (None, -1, self.epochs_per_level, self.total_epochs):
                note = (f"IMP sets max_epochs to {self.total_epochs} "
                        f"({self.schedule.levels + 1} levels x {self.epochs_per_level} epochs).")
        check(max_steps in (None, -1), "IMP levels are set in epochs, but trainer.max_steps is set too",
              max_steps, "Remove trainer.max_steps (IMP sets max_epochs = levels x epochs), or measure "
              "levels in steps: remove epochs_per_level and set max_steps or steps_per_level per level.")
        return note

    @property
    def total_steps(self) -> int:
        """``(levels + 1) * steps_per_level`` once resolved (levels in steps)."""
        assert self.steps_per_level is not None
        return (self.schedule.levels + 1) * self.steps_per_level

    def steps_of_level(self, num_batches: float, accumulate: int) -> int | None:
        """Optimizer steps of one level (``None``: an epoch of unknown length)."""
        if self.steps_per_level is not None:
            return self.steps_per_level
        if num_batches == float("inf"):
            return None
        return int(self.epochs_per_level or 0) * -(-int(num_batches) // max(1, accumulate))

    def due_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (about to be taken) belongs to a later level (levels in
        steps only)."""
        spl = self.steps_per_level
        return spl is not None and self.level < self.schedule.levels and step // spl > self.level

    def next_boundary(self, step: int) -> int | None:
        """The first level boundary after step ``step`` (levels in steps only)."""
        spl = self.steps_per_level
        if spl is None:
            return None
        nxt = (step // spl + 1) * spl
        return nxt if nxt < self.total_steps else None

    @property
    def total_epochs(self) -> int:
        """``(levels + 1) * epochs_per_level`` once resolved (-1, no limit, for levels in steps)."""
        if self.steps_per_level is not None:
            return -1
        assert self.epochs_per_level is not None
        return (self.schedule.levels + 1) * self.epochs_per_level

    def check_rewind_step(self, num_batches: float, accumulate: int, opts: ImpOptions) -> None:
        """Refuse a ``rewind_step`` past the end of a level of ``num_batches`` batches per epoch."""
        per_level = self.steps_of_level(num_batches, accumulate)
        if per_level is not None:
            check(opts.rewind_step <= per_level, "rewind_step is past the end of a level", opts.rewind_step,
                  f"A level has {per_level} optimizer steps; choose rewind_step <= {per_level}.")

    def due(self, epoch: int) -> bool:
        """Whether training epoch ``epoch`` (0-based, about to start) belongs to a later level
        (levels in epochs only)."""
        if self.steps_per_level is not None:
            return False
        assert self.epochs_per_level is not None
        return epoch // self.epochs_per_level > self.level

    def unfinished(self, epochs_done: int, steps_done: int = 0) -> bool:
        """Whether the current level has run all its epochs (or steps) but has no record yet."""
        done = {h["level"] for h in self.history}
        if self.steps_per_level is not None:
            return steps_done >= (self.level + 1) * self.steps_per_level and self.level not in done
        assert self.epochs_per_level is not None
        return epochs_done >= (self.level + 1) * self.epochs_per_level and self.level not in done

    def wants_snapshot(self, step: int, opts: ImpOptions) -> bool:
        """Whether the state after optimizer step ``step`` is the rewind point not yet taken: step
        ``rewind_step`` of level 0 (rewind ``weights``), or the initial state for every mode."""
        return (self.level == 0 and self.snapshot is None and step == opts.rewind_step
                and (opts.rewind == "weights" or step == 0))

    def initial_start(self, module: nn.Module, step: int, opts: ImpOptions) -> dict[str, Tensor] | None:
        """At the very start of a fit (level 0, step 0) the state level 0 starts from, having taken
        it as the rewind point if that is the initial state; ``None`` later (a resumed fit)."""
        if self.level != 0 or step != 0:
            return None
        if self.wants_snapshot(0, opts):
            self.snapshot = module_state(module)
        return module_state(module)

    def rewind_(self, module: nn.Module, opts: ImpOptions) -> dict[str, Tensor]:
        """Set ``module`` to the start of the next level and return that state (``rewind.pt``): the
        rewind point for rewind ``weights``, else the trained weights as they are."""
        if opts.rewind != "weights":
            return module_state(module)
        check(self.snapshot is not None, "the rewind step was never reached in level 0",
              opts.rewind_step, "Choose a rewind_step within the first level.")
        load_state_(module, self.snapshot)
        return self.snapshot

    def proposal(self, module: nn.Module, level: int, compute: bool = True) -> dict[str, Tensor]:
        """The masks of ``level`` from ``module``'s weights (:meth:`next_masks`), or, without
        ``compute``, the current masks (a placeholder for a rank that receives them)."""
        assert self.masks is not None
        if not compute:
            return dict(self.masks)
        params = dict(module.named_parameters())
        return self.next_masks({n: params[n].detach() for n in self.masks}, level)

    def finish(self, module: nn.Module, final: Mapping[str, Tensor], epoch: int, step: int,
               export: bool = True) -> tuple[dict[str, Any], dict[str, Any], nn.Module | None]:
        """Record the finished level (:meth:`record`, with ``module``'s member rows); returns the
        record, ``sparsity.json`` (:meth:`level_report`) and, for a structured run with ``export``,
        the exported network, whose size the record lists as ``exported_params``."""
        rows = module.member_rows() if hasattr(module, "member_rows") else [{}]
        record = self.record(final, rows, epoch, step)
        small = self.export(module) if export and self.groups is not None else None
        if small is not None:
            record["exported_params"] = sum(p.numel() for p in small.parameters())
        return record, self.level_report(), small

    def level_report(self) -> dict[str, Any]:
        """``sparsity.json`` of the current level: a single model's report, else every member's
        under ``members``; structured runs add the kept channels under ``channels``."""
        reports = self.reports()
        report: dict[str, Any] = reports[0] if len(reports) == 1 and self.num_members is None \
            else {"members": reports}
        if self.groups is not None:
            from overparam_lit.pruning.structured import channel_report

            report["channels"] = channel_report(self.groups, self.keep)
        return report

    def export(self, module: nn.Module) -> nn.Module:
        """The structurally pruned network of ``module`` (``module.net`` with only the kept channels)."""
        from overparam_lit.pruning.structured import export_pruned

        assert self.keep is not None
        return export_pruned(module.net, example_input(module), self.keep, prefix="net.")

    def start(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Density-1 masks of the prunable ``weights`` (unless already restored)."""
        if self.masks is None:
            if self.groups is not None:
                from overparam_lit.pruning.structured import group_masks

                self.keep = {g.root: torch.ones(g.size, dtype=torch.bool) for g in self.groups}
                self.masks = group_masks(self.groups, weights, self.keep)
            else:
                self.masks = initial_masks(weights, self.base, stacked=self.num_members is not None)
        return self.masks

    def next_masks(self, weights: Mapping[str, Tensor], level: int) -> dict[str, Tensor]:
        """Masks of ``level``: the largest-magnitude survivors of every member."""
        assert self.masks is not None
        if self.groups is not None:
            from overparam_lit.pruning.structured import group_masks, prune_channels

            density = self.schedule.density(level)
            self.keep = prune_channels(self.groups, weights, self.keep, density, self.scope)
            return group_masks(self.groups, weights, self.keep)
        return prune_members(weights, self.masks, self.schedule.density(level), self.scope,
                             self.own_densities(level), self.base, self.num_members, self.pools)

    def advance(self, masks: Mapping[str, Tensor]) -> None:
        """Enter the next level with ``masks``."""
        self.masks = {n: m.cpu() for n, m in masks.items()}
        self.level += 1
        self.best = {}

    def observe(self, metrics: Mapping[str, Tensor]) -> None:
        """Keep the best value of each accuracy seen during the level (per member)."""
        self.best = best_accuracies(self.best, metrics)

    def record(self, final: Mapping[str, Tensor], member_rows: Sequence[Mapping[str, Any]],
               epoch: int, step: int) -> dict[str, Any]:
        """The record of the finished level: densities and final/best metrics, as means over
        members with every member listed under ``members``; appended to :attr:`history`."""
        reports = self.reports()
        per_member = []
        for i, (rep, row) in enumerate(zip(reports, member_rows, strict=True)):
            entry: dict[str, Any] = {**dict(row), "density": rep["total"]["density"],
                                     "sparsity": rep["total"]["sparsity"], "kept": rep["total"]["kept"],
                                     "prunable": rep["total"]["numel"]}
            entry.update({k: float(torch.as_tensor(v).reshape(-1)[i]) for k, v in final.items()})
            entry.update({f"best_{k}": v[i] for k, v in self.best.items()})
            per_member.append(entry)
        keys = [k for k in per_member[0] if k not in ("member", "seed", "width", "num_params")]
        record: dict[str, Any] = {"level": self.level, "target_density": self.schedule.density(self.level)}
        for k in keys:
            vals = [e[k] for e in per_member if isinstance(e.get(k), (int, float))]
            if vals:
                record[k] = sum(vals) / len(vals)
        record.update({"epoch": epoch, "global_step": step, "pools": self.pool_names()})
        if self.num_members is not None:
            record["members"] = per_member
        self.history = [h for h in self.history if h["level"] != self.level] + [record]
        return record

    def reports(self) -> list[dict]:
        """Per-member sparsity reports of the current masks."""
        assert self.masks is not None
        masks = {n: m for n, m in self.masks.items() if self.prunable is None or n in self.prunable}
        return member_reports(masks, self.base, self.num_members)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the run exactly."""
        return {"level": self.level, "masks": self.masks, "snapshot": self.snapshot,
                "history": self.history, "best": self.best, "keep": self.keep,
                "epochs_per_level": self.epochs_per_level, "steps_per_level": self.steps_per_level}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.level = int(state["level"])
        self.masks = state["masks"]
        self.snapshot = state["snapshot"]
        self.history = list(state["history"])
        self.best = dict(state.get("best") or {})
        self.keep = state.get("keep")
        if state.get("epochs_per_level") is not None:
            self.epochs_per_level = int(state["epochs_per_level"])
        if state.get("steps_per_level") is not None:
            self.steps_per_level = int(state["steps_per_level"])

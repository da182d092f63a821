"""Widening a model in the middle of a fit: the settings, the per-member widening, the losses on a
fixed probe set, the nudge and the record (no Lightning).

The :class:`~overparam_lit.callbacks.widen.Widen` callback calls these at the widening step:
:class:`WidenOptions` checks its arguments and the model; :func:`widen_module` widens every
member's network with its own generator and swaps the wide networks into the module (naming the
family width of the wide network, :func:`family_width`); :func:`probe_losses` measures each
member's loss before and after; :func:`nudge_members` moves the wide weights off an exact critical
point; :func:`carry_over` keeps the learning rates and the scheduler's state across the rebuilt
optimizer; :func:`widen_record` and :func:`widen_scalars` are ``widen.json`` and the logged
``widen/*`` scalars.

**Members** (``--model.seeds``): every member is widened the same way, each with its own unit
choice and draws from the generator seeded by
:func:`~overparam_lit.models.stack.control_seed` ``(seed, member seed)``; a single run with
``--seed_everything s`` uses the same generator, so member ``s`` widens exactly as that run.
Stacks of several widths (``--model.widths``) are refused.

**Hessian probes around the widening.** With ``probe_around`` (default) every
``HessianProbe`` on the trainer probes the narrow network at the end of step ``step - 1`` and
the wide network right after the widening, at step ``step`` (before any nudge), in addition
to its own schedule: ``hessian/probe_step<step-1>.npz`` and ``probe_step<step>.npz``. Widen
moves itself before the probes in the callback list, so a probe scheduled at ``step`` always
sees the wide network, whatever the order of the config fragments. (Two probes at one step
would write one file, so "before" is one optimizer step earlier; at ``step: 0`` there is no
"before" probe.)

**Nudge.** At an exact critical point the gradient of the wide net is zero too, and gradient
descent leaves the saddle only as fast as rounding noise grows along the negative curvature.
``nudge > 0`` moves each member's weights by that L2 norm along ``nudge_direction``:
``split`` (``duplicate`` only; separates every copy from its unit, which leaves the outputs
unchanged to first order, :func:`~overparam_lit.escape.surgery.split_direction`), ``random``
(Gaussian over all parameters) or the path of a ``.pt`` file ``{parameter name: tensor}``
keyed like the module's ``state_dict`` (``net.0.weight``; with members, a leading member
axis), normalised per member. Measured (``tests/unit/callbacks/test_widen.py``): at a float64 critical point
of a width-2 tanh student, widened to 3 (``lambda_min`` -0.017), 600 full-batch SGD steps
leave the loss unchanged to 16 digits without a nudge, while a ``split`` nudge of 1e-2
halves it; at points that are not exact critical points (any ordinary fit) it is not needed.

**Limits.** One Widen per fit (widen again in a fit resumed from its checkpoint), one process
(under DDP the model would have to be re-wrapped after the swap; refused in ``setup``), and
not together with IMP or TicketStart (their masks keep the narrow shapes).

**Checkpoints.** A checkpoint written after the widening holds the wide network. When a fit
resumes from it, the module reshapes its network to the checkpoint's shapes just before
Lightning loads the weights (``OverparamModule.on_load_checkpoint`` with
:func:`~overparam_lit.escape.surgery.resize_to`), so the resumed fit equals the uninterrupted one.
A checkpoint written before the widening resumes narrow and widens at ``step`` exactly as the
first fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from overparam_lit.escape.surgery import (
    METHODS,
    UNIT_RULES,
    Widened,
    choose_units,
    growth,
    hidden_sizes,
    nudge_,
    random_direction,
    split_direction,
    widen_layers,
)
from overparam_lit.evaluation import widen_probe_losses
from overparam_lit.utils import ConfigError, check

NUDGE_DIRECTIONS = ("split", "random")
SPLITS = ("train", "val", "test")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class WidenOptions:
    """The settings of a widening during a fit (the options of
    :class:`~overparam_lit.callbacks.widen.Widen`), checked on construction. A ``unit`` tuple
    becomes a list, ``ratio`` and ``nudge`` floats.

    Args:
        step: optimizer step after which to widen (``>= 0``); exactly one of ``step`` and ``epoch``.
        epoch: widen after this many training epochs (``>= 0``).
        method: ``duplicate`` or ``zero``.
        units: width units to add (``>= 1``): per hidden layer in proportion to its size, or to
            ``layer`` only.
        layer: index of the one hidden layer to widen (``None``: every hidden layer).
        ratio: ``duplicate``: share of the outgoing weights the original unit keeps.
        unit: ``duplicate``: which units to split: ``random`` (distinct units in a seeded random
            order), ``largest`` (largest outgoing weights first), a unit index (split it every
            time) or a list of indices, one per new unit of each widened layer.
        seed: seed of the random choices (combined with each member's seed).
        nudge: L2 norm of the nudge after widening (0: none).
        nudge_direction: ``split``, ``random`` or a ``.pt`` file of directions.
        restart_schedule: restart the LR schedule from ``configure_optimizers`` instead of
            carrying the learning rates and scheduler state over.
        probe_around: run the trainer's ``HessianProbe`` callbacks at steps ``step - 1`` and ``step``.
        probe_size: samples of the fixed set the losses are measured on (``None``: the whole split).
        split: data split of that set.
    """

    step: int | None = None
    epoch: int | None = None
    method: str = "duplicate"
    units: int = 1
    layer: int | None = None
    ratio: float = 0.5
    unit: str | int | list[int] = "random"
    seed: int = 0
    nudge: float = 0.0
    nudge_direction: str = "split"
    restart_schedule: bool = False
    probe_around: bool = True
    probe_size: int | None = 1000
    split: str = "train"

    def __post_init__(self) -> None:
        step, epoch, unit, nudge = self.step, self.epoch, self.unit, self.nudge
        direction = self.nudge_direction
        check((step is None) != (epoch is None), "Widen needs exactly one of step and epoch",
              {"step": step, "epoch": epoch}, "Set step (an optimizer step) or epoch, not both.")
        check(step is None or (_is_index(step) and step >= 0), "the widening step must be an integer >= 0",
              step, "Set step to the optimizer step after which to widen, e.g. 1000 (0: before training).")
        check(epoch is None or (_is_index(epoch) and epoch >= 0),
              "the widening epoch must be an integer >= 0", epoch,
              "Set epoch to the number of training epochs after which to widen, e.g. 10.")
        check(self.method in METHODS, "unknown widening method", self.method, f"Use one of {METHODS}.")
        check(_is_index(self.units) and self.units >= 1, "units must be an integer >= 1", self.units,
              "Set units to the width units to add, e.g. 1.")
        check(self.layer is None or (_is_index(self.layer) and self.layer >= 0),
              "layer must be a hidden layer index >= 0", self.layer,
              "Leave layer null to widen every hidden layer, or give e.g. 0 (the first).")
        check(_is_real(self.ratio), "ratio must be a finite real number", self.ratio,
              "Use e.g. 0.5 (any real preserves the function).")
        rule_ok = (unit in UNIT_RULES if isinstance(unit, str) else
                   (_is_index(unit) and unit >= 0) or (isinstance(unit, (list, tuple)) and len(unit) >= 1
                                                        and all(_is_index(j) and j >= 0 for j in unit)))
        check(rule_ok, "unknown unit choice", unit,
              f"Use one of {UNIT_RULES}, a unit index such as 0, or a list of indices.")
        check(_is_index(self.seed) and self.seed >= 0, "seed must be an integer >= 0", self.seed,
              "Use e.g. 0.")
        check(_is_real(nudge) and nudge >= 0, "nudge must be a number >= 0", nudge,
              "Use 0 (no nudge) or e.g. 1e-3.")
        check(isinstance(direction, str) and (direction in NUDGE_DIRECTIONS or direction.endswith(".pt")),
              "unknown nudge direction", direction,
              f"Use one of {NUDGE_DIRECTIONS} or the path of a .pt file of directions.")
        check(not (nudge > 0 and direction == "split" and self.method != "duplicate"),
              "the split nudge separates duplicated units, but method is not 'duplicate'",
              (self.method, direction), "Use nudge_direction: random, or method: duplicate.")
        if nudge > 0 and direction not in NUDGE_DIRECTIONS:
            check(Path(direction).is_file(), "the nudge direction file does not exist",
                  direction, "Give the path of a .pt file {parameter name: tensor}.")
        check(self.probe_size is None or (_is_index(self.probe_size) and self.probe_size >= 1),
              "probe_size must be a positive integer or null", self.probe_size, "Use e.g. 1000.")
        check(self.split in SPLITS, "unknown split", self.split, "Use 'train', 'val' or 'test'.")
        object.__setattr__(self, "ratio", float(self.ratio))
        object.__setattr__(self, "unit", list(unit) if isinstance(unit, tuple) else unit)
        object.__setattr__(self, "nudge", float(nudge))

    def check_module(self, module: nn.Module) -> None:
        """Refuse a model (an ``OverparamModule``: ``member_networks()``, ``width``, ``members``) or
        settings the widening cannot handle, before any training step: a stack of padded widths,
        a network :func:`~overparam_lit.escape.surgery.growth` cannot grow, unit indices out of
        range, or a nudge direction file that does not hold ``{parameter name: tensor}``."""
        if module.members is not None:
            widths = sorted({m.width for m in module.members})
            check(not module.net.structure and len(widths) == 1,
                  "Widen widens members of one width only, but this stack pads widths", widths,
                  "Use members of one width (any number of seeds), or widen each width in a fit of its own.")
        net, width, name = module.member_networks()[0], module.width, type(module).__name__
        try:
            added = growth(net, self.units, self.layer, width=width)
            if self.method == "duplicate" and not isinstance(self.unit, str):
                for i, count in enumerate(added):
                    if count:
                        choose_units(net, i, count, self.unit)
        except ConfigError as err:
            raise ConfigError(f"Widen cannot widen {name}: {err}") from None
        if self.nudge > 0 and self.nudge_direction not in NUDGE_DIRECTIONS:
            given = torch.load(self.nudge_direction, map_location="cpu", weights_only=True)
            check(isinstance(given, dict) and all(torch.is_tensor(v) for v in given.values()),
                  "the nudge direction file must hold {parameter name: tensor}", type(given).__name__,
                  "Save a dict such as {'net.0.weight': tensor} with torch.save.")

    def probe_subset(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The fixed set the losses are measured on: ``probe_size`` samples of ``(x, y)`` drawn with
        ``seed`` (all of them when ``probe_size`` is ``None`` or not smaller)."""
        if self.probe_size is not None and self.probe_size < x.shape[0]:
            idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))
            x, y = x[idx[: self.probe_size]], y[idx[: self.probe_size]]
        return x, y

    def widening_step(self, batches: float, accumulate: int, total: float) -> int:
        """The optimizer step of the widening (``epoch`` x steps per epoch of ``batches`` batches,
        or ``step``); refused past the fit's ``total`` optimizer steps."""
        at = self.step
        if self.epoch is not None:
            check(batches != float("inf"), "Widen at an epoch needs a train loader with a length",
                  batches, "Give the widening step instead (step: ...).")
            at = self.epoch * -(-int(batches) // max(1, accumulate))
        assert at is not None
        if at > total:
            raise ConfigError(f"the widening step is past the end of training (got step {at}, but the "
                              f"fit has {int(total)} optimizer steps). Widen at a step <= {int(total)}, "
                              "or train longer.")
        return at


def probe_losses(module: nn.Module, x_all: Tensor, y_all: Tensor, chunk: int = 1000) -> Tensor:
    """Each member's mean training loss (``module.member_losses``) on ``(x_all, y_all)`` in eval
    mode, in chunks of ``chunk`` samples: ``(M,)`` float64 on the CPU; training modes are restored."""
    return widen_probe_losses(module, x_all, y_all, chunk)


def widen_members(nets: Sequence[nn.Module], seeds: Sequence[int], opts: WidenOptions,
                  width: int) -> tuple[list[Widened], list[torch.Generator]]:
    """Every member's widened copy (:func:`~overparam_lit.escape.surgery.widen_layers` of the
    :func:`~overparam_lit.escape.surgery.growth` of family width ``width``), each drawn from its
    own generator seeded with ``seeds[i]``; returns them and the generators (for the nudge)."""
    wides, gens = [], []
    for net, seed in zip(nets, seeds, strict=True):
        gen = torch.Generator().manual_seed(seed)
        added = growth(net, opts.units, opts.layer, width=width)
        wides.append(widen_layers(net, added, opts.method, opts.ratio, opts.unit, gen))
        gens.append(gen)
    return wides, gens


@dataclass
class Widening:
    """What :func:`widen_module` did: the members' wide copies, their generators, the family width
    of the wide network (``None``: none) and the network ``before`` (``width``, ``num_params``,
    ``hidden_sizes``)."""

    wides: list[Widened]
    gens: list[torch.Generator]
    width: int | None
    before: dict[str, Any]


def widen_module(module: nn.Module, opts: WidenOptions, seeds: Sequence[int]) -> Widening:
    """Widen every member of ``module`` (:func:`widen_members`, member ``i`` drawn with
    ``seeds[i]``) and make the wide networks its network (``module.set_network``, with the
    :func:`family_width` of the wide network when it has one)."""
    nets = module.member_networks()
    before = {"width": module.width, "num_params": module.num_params, "hidden_sizes": hidden_sizes(nets[0])}
    wides, gens = widen_members(nets, seeds, opts, before["width"])
    guess = before["width"] + opts.units if opts.layer is None else hidden_sizes(wides[0].net)[0]
    width = family_width(module, wides[0].net, [guess])
    module.set_network([w.net for w in wides], width)
    return Widening(wides, gens, width, before)


def _shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in [*net.named_parameters(), *net.named_buffers()]}


def family_width(module: nn.Module, net: nn.Module, guesses: Sequence[int]) -> int | None:
    """The family width whose ``module.build_network()`` has exactly ``net``'s shapes (``None``:
    none of ``guesses`` has them, e.g. when one layer was widened). Builds on the meta device;
    ``module.width`` and torch's RNG are left as they were."""
    want, saved = _shapes(net), module.width
    try:
        for w in dict.fromkeys(int(g) for g in guesses if int(g) >= 1):
            module.width = w
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                torch.random.default_generator.manual_seed(0)  # as a run seeded with 0 builds it
                built = module.build_network()
            if _shapes(built) == want:
                return w
    except (ConfigError, RuntimeError, ValueError):
        return None
    finally:
        module.width = saved
    return None


def nudge_direction(opts: WidenOptions, i: int, wide: Widened, gen: torch.Generator,
                    stacked: bool) -> dict[str, Tensor]:
    """Member ``i``'s nudge direction: ``split``, ``random`` or its slice of the ``.pt`` file
    (``net.`` prefixes dropped; a leading member axis when ``stacked``)."""
    if opts.nudge_direction == "split":
        return split_direction(wide, gen)
    if opts.nudge_direction == "random":
        return random_direction(wide.net, gen)
    given = torch.load(opts.nudge_direction, map_location="cpu", weights_only=True)
    out = {}
    for name, t in given.items():
        key = name[len("net."):] if name.startswith("net.") else name
        out[key] = t[i] if stacked else t
    return out


def nudge_members(module: nn.Module, wides: Sequence[Widened], gens: Sequence[torch.Generator],
                  opts: WidenOptions, stacked: bool) -> None:
    """Move every member's wide weights by ``opts.nudge`` along its :func:`nudge_direction`, and
    copy them into ``module``'s stack when ``stacked`` (a single model holds the wide net itself)."""
    for i, wide in enumerate(wides):
        nudge_(wide.net, nudge_direction(opts, i, wide, gens[i], stacked), opts.nudge)
        if stacked:
            module.net.load_member_state(i, wide.net.state_dict())


def carry_over(old_optimizers: Sequence[torch.optim.Optimizer], old_schedulers: Sequence[Any],
               new_optimizers: Sequence[torch.optim.Optimizer], new_schedulers: Sequence[Any]) -> None:
    """Give rebuilt optimizers and LR schedulers the old ones' learning rates and settings (every
    param-group entry but ``params``) and scheduler state, so the schedule continues."""
    for old, new in zip(old_schedulers, new_schedulers, strict=False):
        new.load_state_dict(old.state_dict())
    for old, new in zip(old_optimizers, new_optimizers, strict=False):
        for g_old, g_new in zip(old.param_groups, new.param_groups, strict=False):
            g_new.update({k: v for k, v in g_old.items() if k != "params"})


def widen_record(opts: WidenOptions, done: Widening, module: nn.Module, step: int, epoch: int,
                 rows: Sequence[Mapping[str, Any]], losses: Sequence[Tensor | None],
                 probes: Mapping[str, int | None]) -> dict[str, Any]:
    """``widen.json``: the settings, the units chosen, widths, hidden sizes and parameter counts
    before and after (``module`` is the wide model), the member-mean losses (before, after,
    nudged), the ``probes`` steps and every member (``rows`` with the family width of the wide
    network when it has one)."""
    wides, width, before = done.wides, done.width, done.before
    after = {"width": module.width, "num_params": module.num_params,
             "hidden_sizes": hidden_sizes(wides[0].net)}
    loss_before, loss_after, loss_nudged = losses
    assert loss_before is not None and loss_after is not None
    members = [{**row, "width": row["width"] if width is None else width,
                "units_chosen": wide.sources, "loss_before": float(loss_before[i]),
                "loss_after": float(loss_after[i]),
                "loss_nudged": None if loss_nudged is None else float(loss_nudged[i])}
               for i, (row, wide) in enumerate(zip(rows, wides, strict=True))]
    for m in members:
        m["num_params"] = after["num_params"]
    return {
        "step": step, "epoch": epoch, "method": opts.method, "ratio": opts.ratio,
        "units": opts.units, "layer": opts.layer, "unit": opts.unit, "seed": opts.seed,
        "units_chosen": wides[0].sources if len(wides) == 1 else None,
        "width_before": before["width"], "width_after": after["width"],
        "hidden_sizes_before": before["hidden_sizes"], "hidden_sizes_after": after["hidden_sizes"],
        "num_params_before": before["num_params"], "num_params_after": after["num_params"],
        "loss_before": float(loss_before.mean()), "loss_after": float(loss_after.mean()),
        "max_abs_loss_change": float((loss_after - loss_before).abs().max()),
        "nudge": opts.nudge, "nudge_direction": opts.nudge_direction if opts.nudge > 0 else None,
        "loss_nudged": None if loss_nudged is None else float(loss_nudged.mean()),
        "probes": dict(probes),
        "members": members,
    }


def widen_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The logged ``widen/*`` scalars of a :func:`widen_record`."""
    scalars = {"widen/step": record["step"], "widen/width": record["width_after"],
               "widen/num_params": record["num_params_after"], "widen/loss_before": record["loss_before"],
               "widen/loss_after": record["loss_after"]}
    if record["loss_nudged"] is not None:
        scalars["widen/loss_nudged"] = record["loss_nudged"]
    return scalars

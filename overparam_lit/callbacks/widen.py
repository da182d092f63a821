"""``Widen``: function-preserving widening in the middle of a fit (escape dimensions).

A thin adapter over :mod:`overparam_lit.escape.widen`: at the chosen optimizer step it widens the
module's network without changing its function (``zero`` or ``duplicate``), swaps it into the
module, rebuilds the optimizer, logs ``widen/*``, optionally nudges the weights, lets the
trainer's :class:`~overparam_lit.callbacks.hessian.HessianProbe` callbacks probe the network
around the widening, and writes ``<run_dir>/widen/widen.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from typing_extensions import override

from overparam_lit.compat import fresh_optimizers
from overparam_lit.escape.widen import (
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
from overparam_lit.models.base import OverparamModule
from overparam_lit.models.stack import StackedNet, control_seed, seeded
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import ConfigError, atomic_write_json, check, log_scalars

NUDGE_DIRECTIONS = ("split", "random")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _family_width(pl_module: OverparamModule, net: nn.Module, guesses: Sequence[int]) -> int | None:
    """The family width whose ``build_network()`` has exactly ``net``'s shapes (``None``: none of
    ``guesses`` has them, e.g. when one layer was widened)."""
    want = {n: tuple(t.shape) for n, t in [*net.named_parameters(), *net.named_buffers()]}
    saved = pl_module.width
    try:
        for w in dict.fromkeys(int(g) for g in guesses if int(g) >= 1):
            pl_module.width = w
            with seeded(0), torch.device("meta"):
                built = pl_module.build_network()
            got = {n: tuple(t.shape) for n, t in [*built.named_parameters(), *built.named_buffers()]}
            if got == want:
                return w
    except (ConfigError, RuntimeError, ValueError):
        return None
    finally:
        pl_module.width = saved
    return None


class Widen(L.Callback):
    """Widen the network once during a fit without changing its function, and keep training.

    At optimizer step ``step`` (after that many steps; or after ``epoch`` epochs, the step
    ``epoch x steps per epoch``), at the end of the training batch and before any
    ``HessianProbe``, every hidden layer grows by ``units`` units (MLP) or channels (CNN) in
    proportion to its size (:func:`~overparam_lit.escape.widen.growth`: an MLP or CNN of width
    ``k`` becomes the family's net of width ``k + units``), or only hidden layer ``layer`` grows
    by ``units``. ``zero`` gives new units fresh incoming and zero outgoing weights; ``duplicate``
    splits existing units, the original keeping ``ratio`` of its outgoing weights and the copy
    ``1 - ratio``: at a critical point it gives a line of critical points whose splitting
    curvature can turn a minimum into a saddle (Fukumizu & Amari 2000; Simsek et al. 2021).

    Then the optimizer and LR scheduler are rebuilt for the new parameters (``configure_optimizers``):
    per-parameter state (momentum, Adam moments) starts fresh; unless ``restart_schedule``, the
    learning rates and the scheduler's state carry over, so the schedule continues where it was.
    The module's ``width`` (when the wide net is the family's net at some width), its members'
    widths, ``num_params`` and ``member_num_params`` describe the wide network, and
    ``model/width`` / ``model/num_params`` are logged again. ``hparams`` keep the width the
    network was *built* at (the CLI resumes a checkpoint only with the settings it was trained
    with); the widening is recorded in this callback's checkpoint state and in the artifact.

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
    unchanged to first order, :func:`~overparam_lit.escape.widen.split_direction`), ``random``
    (Gaussian over all parameters) or the path of a ``.pt`` file ``{parameter name: tensor}``
    keyed like the module's ``state_dict`` (``net.0.weight``; with members, a leading member
    axis), normalised per member. Measured (``tests/test_widen.py``): at a float64 critical point
    of a width-2 tanh student, widened to 3 (``lambda_min`` -0.017), 600 full-batch SGD steps
    leave the loss unchanged to 16 digits without a nudge, while a ``split`` nudge of 1e-2
    halves it; at points that are not exact critical points (any ordinary fit) it is not needed.

    **Limits.** One Widen per fit (widen again in a fit resumed from its checkpoint), one process
    (under DDP the model would have to be re-wrapped after the swap; refused in ``setup``), and
    not together with IMP or TicketStart (their masks keep the narrow shapes).

    **Checkpoints.** A checkpoint written after the widening holds the wide network. When a fit
    resumes from it, this callback reshapes the module's network to the checkpoint's shapes just
    before Lightning loads the weights (the strategy's ``load_model_state_dict`` is wrapped for
    the duration of the restore), so the resumed fit equals the uninterrupted one. A checkpoint
    written before the widening resumes narrow and widens at ``step`` exactly as the first fit.

    Artifacts and logs: ``widen/step``, ``widen/width``, ``widen/num_params``,
    ``widen/loss_before``, ``widen/loss_after`` (training loss on a fixed probe set in eval
    mode, member means; equal up to float rounding), ``widen/loss_nudged``; and
    ``<run_dir>/widen/widen.json`` with the step, method, ratio, the units chosen, widths,
    hidden sizes and parameter counts before and after, losses, the probe steps and every member.

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

    def __init__(self, step: int | None = None, epoch: int | None = None, method: str = "duplicate",
                 units: int = 1, layer: int | None = None, ratio: float = 0.5,
                 unit: str | int | list[int] = "random", seed: int = 0, nudge: float = 0.0,
                 nudge_direction: str = "split", restart_schedule: bool = False, probe_around: bool = True,
                 probe_size: int | None = 1000, split: str = "train") -> None:
        super().__init__()
        check((step is None) != (epoch is None), "Widen needs exactly one of step and epoch",
              {"step": step, "epoch": epoch}, "Set step (an optimizer step) or epoch, not both.")
        check(step is None or (_is_index(step) and step >= 0), "the widening step must be an integer >= 0",
              step, "Set step to the optimizer step after which to widen, e.g. 1000 (0: before training).")
        check(epoch is None or (_is_index(epoch) and epoch >= 0),
              "the widening epoch must be an integer >= 0", epoch,
              "Set epoch to the number of training epochs after which to widen, e.g. 10.")
        check(method in METHODS, "unknown widening method", method,
              f"Use one of {METHODS}.")
        check(_is_index(units) and units >= 1, "units must be an integer >= 1", units,
              "Set units to the width units to add, e.g. 1.")
        check(layer is None or (_is_index(layer) and layer >= 0), "layer must be a hidden layer index >= 0",
              layer, "Leave layer null to widen every hidden layer, or give e.g. 0 (the first).")
        check(isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio),
              "ratio must be a finite real number", ratio, "Use e.g. 0.5 (any real preserves the function).")
        rule_ok = (unit in UNIT_RULES if isinstance(unit, str) else
                   (_is_index(unit) and unit >= 0) or (isinstance(unit, (list, tuple)) and len(unit) >= 1
                                                        and all(_is_index(j) and j >= 0 for j in unit)))
        check(rule_ok, "unknown unit choice", unit,
              f"Use one of {UNIT_RULES}, a unit index such as 0, or a list of indices.")
        check(_is_index(seed) and seed >= 0, "seed must be an integer >= 0", seed, "Use e.g. 0.")
        check(isinstance(nudge, (int, float)) and not isinstance(nudge, bool) and math.isfinite(nudge)
              and nudge >= 0, "nudge must be a number >= 0", nudge, "Use 0 (no nudge) or e.g. 1e-3.")
        check(isinstance(nudge_direction, str) and (nudge_direction in NUDGE_DIRECTIONS
                                                    or nudge_direction.endswith(".pt")),
              "unknown nudge direction", nudge_direction,
              f"Use one of {NUDGE_DIRECTIONS} or the path of a .pt file of directions.")
        check(not (nudge > 0 and nudge_direction == "split" and method != "duplicate"),
              "the split nudge separates duplicated units, but method is not 'duplicate'",
              (method, nudge_direction), "Use nudge_direction: random, or method: duplicate.")
        if nudge > 0 and nudge_direction not in NUDGE_DIRECTIONS:
            check(Path(nudge_direction).is_file(), "the nudge direction file does not exist",
                  nudge_direction, "Give the path of a .pt file {parameter name: tensor}.")
        check(probe_size is None or (_is_index(probe_size) and probe_size >= 1),
              "probe_size must be a positive integer or null", probe_size, "Use e.g. 1000.")
        check(split in ("train", "val", "test"), "unknown split", split, "Use 'train', 'val' or 'test'.")
        self.step, self.epoch, self.method, self.units, self.layer = step, epoch, method, units, layer
        self.ratio, self.seed = float(ratio), seed
        self.unit = list(unit) if isinstance(unit, tuple) else unit
        self.nudge, self.nudge_direction = float(nudge), nudge_direction
        self.restart_schedule = restart_schedule
        self.probe_around, self.probe_size, self.split = probe_around, probe_size, split
        self.done = False
        self.record: dict[str, Any] | None = None
        self.at: int | None = step  # the widening step (resolved from epoch in on_train_start)
        self.probed_before: int | None = None  # step of the Hessian probes just before widening
        self._probe: tuple[Tensor, Tensor] | None = None

    # ---- configuration ------------------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check(isinstance(pl_module, OverparamModule), "Widen needs an OverparamModule",
              type(pl_module).__name__,
              "Use a width family (MLP, CNN, LeNet300100) or a subclass of OverparamModule.")
        check(trainer.world_size == 1, "Widen runs in one process only", trainer.world_size,
              "Fit on one device (--trainer.devices 1); widening under DDP would need the model re-wrapped.")
        others = [cb for cb in trainer.callbacks if isinstance(cb, Widen) and cb is not self]
        check(not others, "a fit takes one Widen callback", len(others) + 1,
              "Keep one Widen in trainer.callbacks (widen again in a fit resumed from its checkpoint).")
        from overparam_lit.callbacks.masked import MaskedTraining

        masked = [type(cb).__name__ for cb in trainer.callbacks if isinstance(cb, MaskedTraining)]
        check(not masked, "Widen cannot run with a pruning or ticket callback (its masks keep their shapes)",
              masked, "Fit without IMP / TicketStart, or widen in a separate fit.")
        net = pl_module.net
        if isinstance(net, StackedNet):
            widths = sorted({m.width for m in pl_module.members or []})
            check(not net.structure and len(widths) == 1,
                  "Widen widens members of one width only, but this stack pads widths", widths,
                  "Use --model.seeds with one --model.width (fit each width separately).")
        check(trainer.datamodule is not None and hasattr(trainer.datamodule, "probe_set"),
              "Widen needs a data module with probe_set(num_samples, split, seed)",
              type(trainer.datamodule).__name__, "Train with an overparam-lit data module.")
        member = pl_module.member_networks()[0]
        try:  # refuse a network, or settings, the widening cannot handle before any step
            added = growth(member, self.units, self.layer, width=pl_module.width)
            if self.method == "duplicate" and not isinstance(self.unit, str):
                for i, count in enumerate(added):
                    if count:
                        choose_units(member, i, count, self.unit)
        except ConfigError as err:
            raise ConfigError(f"Widen cannot widen {type(pl_module).__name__}: {err}") from None
        if self.nudge > 0 and self.nudge_direction not in NUDGE_DIRECTIONS:
            given = torch.load(self.nudge_direction, map_location="cpu", weights_only=True)
            check(isinstance(given, dict) and all(torch.is_tensor(v) for v in given.values()),
                  "the nudge direction file must hold {parameter name: tensor}", type(given).__name__,
                  "Save a dict such as {'net.0.weight': tensor} with torch.save.")
        x, y, _ = trainer.datamodule.probe_set(None, self.split)
        if self.probe_size is not None and self.probe_size < x.shape[0]:
            idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))
            x, y = x[idx[: self.probe_size]], y[idx[: self.probe_size]]
        self._probe = (x, y)
        self._order_before_probes(trainer)

    def _order_before_probes(self, trainer: L.Trainer) -> None:
        """Move this callback before every HessianProbe, so a probe at the widening step sees the
        wide network whatever the order of the config fragments."""
        from overparam_lit.callbacks.hessian import HessianProbe

        cbs = trainer.callbacks
        first = next((i for i, cb in enumerate(cbs) if isinstance(cb, HessianProbe)), None)
        mine = next(i for i, cb in enumerate(cbs) if cb is self)
        if first is not None and first < mine:
            cbs.insert(first, cbs.pop(mine))

    # ---- schedule -----------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epoch is not None:
            batches = trainer.num_training_batches
            check(batches != float("inf"), "Widen at an epoch needs a train loader with a length",
                  batches, "Give the widening step instead (step: ...).")
            per_epoch = -(-int(batches) // max(1, trainer.accumulate_grad_batches))
            self.at = self.epoch * per_epoch
        total = trainer.estimated_stepping_batches
        if self.at > total:
            raise ConfigError(f"the widening step is past the end of training (got step {self.at}, but the "
                              f"fit has {int(total)} optimizer steps). Widen at a step <= {int(total)}, "
                              "or train longer.")
        if self.done:
            return
        step = trainer.global_step
        check(step <= self.at,
              "the fit resumes past the widening step from a checkpoint that was not widened",
              (step, self.at),
              "Resume a checkpoint of a fit with this Widen callback, or widen at a later step.")
        if self.probe_around and step == self.at - 1:
            self.probed_before = self._run_probes(trainer, pl_module)
        if step == self.at:
            self.widen_now(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.done:
            return
        step = trainer.global_step
        if self.probe_around and step == self.at - 1:
            self.probed_before = self._run_probes(trainer, pl_module)
        elif step == self.at:
            self.widen_now(trainer, pl_module)

    def _run_probes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int | None:
        from overparam_lit.callbacks.hessian import HessianProbe

        step = int(trainer.global_step)
        probes = [cb for cb in trainer.callbacks if isinstance(cb, HessianProbe)]
        for cb in probes:
            if step not in cb.probed_steps:
                cb.probed_steps.append(step)
                cb.probe(trainer, pl_module)
        return step if probes else None

    # ---- the widening -------------------------------------------------------------------------
    @torch.no_grad()
    def _losses(self, pl_module: OverparamModule) -> Tensor:
        """Each member's mean training loss on the fixed set, in eval mode: ``(M,)`` float64."""
        assert self._probe is not None
        x_all, y_all = self._probe
        param = next(pl_module.net.parameters())
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        total: Tensor | None = None
        try:
            for start in range(0, x_all.shape[0], 1000):
                x = x_all[start : start + 1000].to(param.device)
                y = y_all[start : start + 1000].to(param.device)
                if x.is_floating_point():
                    x = x.to(param.dtype)
                if y.is_floating_point():
                    y = y.to(param.dtype)
                part = pl_module.member_losses(pl_module(x), y).double() * x.shape[0]
                total = part if total is None else total + part
        finally:
            for m, mode in modes.items():
                m.training = mode
        assert total is not None
        return (total / x_all.shape[0]).cpu()

    def _direction(self, i: int, wide: Widened, gen: torch.Generator,
                   stacked: bool) -> dict[str, Tensor]:
        if self.nudge_direction == "split":
            return split_direction(wide, gen)
        if self.nudge_direction == "random":
            return random_direction(wide.net, gen)
        given = torch.load(self.nudge_direction, map_location="cpu", weights_only=True)
        out = {}
        for name, t in given.items():
            key = name[len("net."):] if name.startswith("net.") else name
            out[key] = t[i] if stacked else t
        return out

    def widen_now(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Widen now (all members), rebuild the optimizer, log, probe and write the artifact;
        returns the record written to ``widen.json``."""
        assert isinstance(pl_module, OverparamModule)
        step = int(trainer.global_step)
        rows = pl_module.member_rows()
        stacked = isinstance(pl_module.net, StackedNet)
        loss_before = self._losses(pl_module)
        nets = pl_module.member_networks()
        sizes_before = hidden_sizes(nets[0])
        width_before, params_before = pl_module.width, pl_module.num_params
        wides, gens = [], []
        for net, row in zip(nets, rows, strict=True):
            gen = torch.Generator().manual_seed(control_seed(self.seed, row["seed"]))
            added = growth(net, self.units, self.layer, width=width_before)
            wides.append(widen_layers(net, added, self.method, self.ratio, self.unit, gen))
            gens.append(gen)
        sizes_after = hidden_sizes(wides[0].net)
        guess = width_before + self.units if self.layer is None else sizes_after[0]
        width = _family_width(pl_module, wides[0].net, [guess])
        pl_module.set_network([w.net for w in wides], width)
        self._fresh_optimizers(trainer, pl_module)
        loss_after = self._losses(pl_module)
        after_probe = self._run_probes(trainer, pl_module) if self.probe_around else None
        loss_nudged = None
        if self.nudge > 0:
            for i, wide in enumerate(wides):
                direction = self._direction(i, wide, gens[i], stacked)
                nudge_(wide.net, direction, self.nudge)
                if stacked:
                    pl_module.net.load_member_state(i, wide.net.state_dict())
            loss_nudged = self._losses(pl_module)
        self.done = True
        members = [{**row, "width": row["width"] if width is None else width,
                    "units_chosen": wide.sources, "loss_before": float(loss_before[i]),
                    "loss_after": float(loss_after[i]),
                    "loss_nudged": None if loss_nudged is None else float(loss_nudged[i])}
                   for i, (row, wide) in enumerate(zip(rows, wides, strict=True))]
        for m in members:
            m["num_params"] = pl_module.num_params
        self.record = {
            "step": step, "epoch": int(trainer.current_epoch), "method": self.method, "ratio": self.ratio,
            "units": self.units, "layer": self.layer, "unit": self.unit, "seed": self.seed,
            "units_chosen": wides[0].sources if len(wides) == 1 else None,
            "width_before": width_before, "width_after": pl_module.width,
            "hidden_sizes_before": sizes_before, "hidden_sizes_after": sizes_after,
            "num_params_before": params_before, "num_params_after": pl_module.num_params,
            "loss_before": float(loss_before.mean()), "loss_after": float(loss_after.mean()),
            "max_abs_loss_change": float((loss_after - loss_before).abs().max()),
            "nudge": self.nudge, "nudge_direction": self.nudge_direction if self.nudge > 0 else None,
            "loss_nudged": None if loss_nudged is None else float(loss_nudged.mean()),
            "probes": {"before": self.probed_before, "after": after_probe},
            "members": members,
        }
        scalars = {"widen/step": step, "widen/width": pl_module.width,
                   "widen/num_params": pl_module.num_params, "widen/loss_before": self.record["loss_before"],
                   "widen/loss_after": self.record["loss_after"]}
        if loss_nudged is not None:
            scalars["widen/loss_nudged"] = self.record["loss_nudged"]
        log_scalars(trainer, scalars, step=step)
        pl_module.log_model_size()
        if trainer.global_rank == 0:
            atomic_write_json(self.record, RunFolder.of(trainer).widen_json)
        return self.record

    def _fresh_optimizers(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """New optimizers and schedulers for the new parameters; the learning rates and scheduler
        state carry over unless ``restart_schedule``."""
        old_opts = list(trainer.strategy.optimizers)
        old_scheds = list(trainer.strategy.lr_scheduler_configs)
        fresh_optimizers(trainer, pl_module)
        if self.restart_schedule:
            return
        for old, new in zip(old_scheds, trainer.strategy.lr_scheduler_configs, strict=False):
            new.scheduler.load_state_dict(old.scheduler.state_dict())
        for old, new in zip(old_opts, trainer.strategy.optimizers, strict=False):
            for g_old, g_new in zip(old.param_groups, new.param_groups, strict=False):
                g_new.update({k: v for k, v in g_old.items() if k != "params"})

    # ---- checkpoint state ---------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "at": self.at, "record": self.record, "probed_before": self.probed_before}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
        self.record = state_dict.get("record")
        self.probed_before = state_dict.get("probed_before")

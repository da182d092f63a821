"""``Widen``: function-preserving widening in the middle of a fit (escape dimensions); a thin
adapter over :mod:`overparam_lit.escape.surgery` and :mod:`overparam_lit.escape.widen_step`."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor
from typing_extensions import override

from overparam_lit.callbacks.options import takes_options
from overparam_lit.compat import fresh_optimizers
from overparam_lit.escape import widen_step as wd
from overparam_lit.models.base import OverparamModule
from overparam_lit.models.stack import StackedNet, control_seed
from overparam_lit.models.steps import StepAwareCallback
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_write_json, check, log_scalars


@takes_options(wd.WidenOptions)
class Widen(StepAwareCallback):
    """Widen the network once during a fit without changing its function, and keep training.

    At optimizer step ``step`` (after that many steps; or after ``epoch`` epochs, the step
    ``epoch x steps per epoch``), at the end of the training batch and before any
    ``HessianProbe``, every hidden layer grows by ``units`` units (MLP) or channels (CNN) in
    proportion to its size (:func:`~overparam_lit.escape.surgery.growth`: an MLP or CNN of width
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

    Members (``--model.seeds``, one width) widen each exactly as its single run would; with
    ``probe_around`` every ``HessianProbe`` also probes at steps ``step - 1`` (narrow) and
    ``step`` (wide, before any nudge); a ``nudge`` leaves an exact critical point; one Widen per
    fit, one process, not with IMP or TicketStart; a checkpoint written after the widening
    resumes wide. :mod:`overparam_lit.escape.widen_step` tells each in full.

    Artifacts and logs: ``widen/step``, ``widen/width``, ``widen/num_params``,
    ``widen/loss_before``, ``widen/loss_after`` (training loss on a fixed probe set in eval
    mode, member means; equal up to float rounding), ``widen/loss_nudged``; and
    ``<run_dir>/widen/widen.json`` with the step, method, ratio, the units chosen, widths,
    hidden sizes and parameter counts before and after, losses, the probe steps and every member.

    The options are the fields of :class:`~overparam_lit.escape.widen_step.WidenOptions`, given as
    one ``WidenOptions`` or as keywords (:func:`~overparam_lit.callbacks.options.takes_options`).
    """

    def __init__(self, options: wd.WidenOptions) -> None:
        super().__init__()
        self.opts = options
        self.done = False
        self.record: dict[str, Any] | None = None
        self.at: int | None = options.step  # the widening step (resolved from epoch in on_train_start)
        self.probed_before: int | None = None  # step of the Hessian probes just before widening
        self._probe: tuple[Tensor, Tensor] | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from overparam_lit.callbacks.masked import MaskedTraining

        check(isinstance(pl_module, OverparamModule), "Widen needs an OverparamModule",
              type(pl_module).__name__,
              "Use a width family (MLP, CNN, LeNet300100) or a subclass of OverparamModule.")
        check(trainer.world_size == 1, "Widen runs in one process only", trainer.world_size,
              "Fit on one device (--trainer.devices 1); widening under DDP would need the model re-wrapped.")
        others = [cb for cb in trainer.callbacks if isinstance(cb, Widen) and cb is not self]
        check(not others, "a fit takes one Widen callback", len(others) + 1,
              "Keep one Widen in trainer.callbacks (widen again in a fit resumed from its checkpoint).")
        masked = [type(cb).__name__ for cb in trainer.callbacks if isinstance(cb, MaskedTraining)]
        check(not masked, "Widen cannot run with a pruning or ticket callback (its masks keep their shapes)",
              masked, "Fit without IMP / TicketStart, or widen in a separate fit.")
        check(trainer.datamodule is not None and hasattr(trainer.datamodule, "probe_set"),
              "Widen needs a data module with probe_set(num_samples, split, seed)",
              type(trainer.datamodule).__name__, "Train with an overparam-lit data module.")
        widths = sorted({m.width for m in pl_module.members or ()})
        check(pl_module.members is None or (not pl_module.net.structure and len(widths) == 1),
              "Widen widens members of one width only, but this stack pads widths", widths,
              "Use --model.seeds with one --model.width (fit each width separately).")
        self.opts.check_module(pl_module)
        self._probe = self.opts.probe_subset(*trainer.datamodule.probe_set(None, self.opts.split)[:2])

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.at = self.opts.widening_step(trainer.num_training_batches, trainer.accumulate_grad_batches,
                                          trainer.estimated_stepping_batches)
        if self.done:
            return
        step = trainer.global_step
        check(step <= self.at,
              "the fit resumes past the widening step from a checkpoint that was not widened",
              (step, self.at),
              "Resume a checkpoint of a fit with this Widen callback, or widen at a later step.")
        self._at_step(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not self.done:
            self._at_step(trainer, pl_module)

    @override
    def next_event_step(self, trainer: L.Trainer, step: int) -> int | None:
        """The step before the widening (probed when ``probe_around``) and the widening step."""
        if self.done or self.at is None:
            return None
        stops = [s for s in ((self.at - 1) if self.opts.probe_around else None, self.at)
                 if s is not None and s > step]
        return min(stops, default=None)

    def _at_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Probe the narrow net one step before the widening step, and widen at it."""
        if self.opts.probe_around and trainer.global_step == self.at - 1:
            self.probed_before = self._run_probes(trainer, pl_module)
        elif trainer.global_step == self.at:
            self.widen_now(trainer, pl_module)

    def changes_model_at(self, trainer: L.Trainer, step: int) -> bool:
        """True at the widening step until the network is wide (:class:`~overparam_lit.protocols.
        ModelChanging`): a Hessian probe due at that step waits, and :meth:`widen_now` requests it."""
        return not self.done and self.at is not None and step == self.at

    def _run_probes(self, trainer: L.Trainer, pl_module: L.LightningModule, due_only: bool = False
                    ) -> int | None:
        """Have every Hessian probe probe now (``due_only``: those whose schedule is due at this
        step); the step when there is a probe."""
        from overparam_lit.callbacks.hessian import HessianProbe

        step = int(trainer.global_step)
        probes = [cb for cb in trainer.callbacks if isinstance(cb, HessianProbe)
                  and (not due_only or cb.due_at(step))]
        for cb in probes:
            cb.probe_once(trainer, pl_module)
        return step if probes else None

    def widen_now(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Widen now (all members), rebuild the optimizer, log, probe and write the artifact;
        returns the record written to ``widen.json``."""
        assert isinstance(pl_module, OverparamModule) and self._probe is not None
        opts, step, rows = self.opts, int(trainer.global_step), pl_module.member_rows()
        loss_before = wd.probe_losses(pl_module, *self._probe)
        done = wd.widen_module(pl_module, opts, [control_seed(opts.seed, row["seed"]) for row in rows])
        strategy = trainer.strategy
        old = (list(strategy.optimizers), [c.scheduler for c in strategy.lr_scheduler_configs])
        fresh_optimizers(trainer, pl_module)  # fresh per-parameter state; the schedule carries over
        if not opts.restart_schedule:
            wd.carry_over(*old, strategy.optimizers, [c.scheduler for c in strategy.lr_scheduler_configs])
        loss_after = wd.probe_losses(pl_module, *self._probe)
        after_probe = self._run_probes(trainer, pl_module, due_only=not opts.probe_around)
        after_probe = after_probe if opts.probe_around else None
        loss_nudged = None
        if opts.nudge > 0:
            wd.nudge_members(pl_module, done.wides, done.gens, opts, isinstance(pl_module.net, StackedNet))
            loss_nudged = wd.probe_losses(pl_module, *self._probe)
        self.done = True
        self.record = wd.widen_record(opts, done, pl_module, step, int(trainer.current_epoch), rows,
                                      (loss_before, loss_after, loss_nudged),
                                      {"before": self.probed_before, "after": after_probe})
        log_scalars(trainer, wd.widen_scalars(self.record), step=step)
        pl_module.log_model_size(again=True)
        if trainer.global_rank == 0:
            atomic_write_json(self.record, RunFolder.of(trainer).widen_json)
        return self.record

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "at": self.at, "record": self.record, "probed_before": self.probed_before}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
        self.record = state_dict.get("record")
        self.probed_before = state_dict.get("probed_before")

"""Several optimizer steps per Lightning training step (``--model.steps_per_call``): the epoch's
batches are cut into calls that end on every scheduled event
(:func:`~overparam_lit.models.steps.plan_calls`), and a call steps all but its last batch itself,
with Lightning's hooks, clipping, per-step schedulers and masks in Lightning's order."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.overrides.distributed import prepare_for_backward
from lightning.pytorch.plugins import Precision
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from overparam_lit.compat import count_inner_steps, set_epoch_calls, settle_ddp_buckets
from overparam_lit.models.steps import (
    StepAwareCallback,
    StepChunk,
    overrides,
    plan_calls,
    resolve_steps_per_call,
    val_period,
)


class StepCalls:
    """Calls of several optimizer steps (a mixin of
    :class:`~overparam_lit.models.base.OverparamModule`)."""

    def on_train_start(self) -> None:
        if self.step_calls > 1:  # the schedulers exist now
            self.step_calls, self.step_calls_reason = resolve_steps_per_call(
                self.steps_per_call, self.trainer, self)
        cbs = self.trainer.callbacks
        self._inner_hooks = {hook: [cb for cb in cbs if overrides(cb, L.Callback, hook)] for hook in (
            "on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")}
        self._inner_hooks["on_optimizer_step_end"] = [
            cb for cb in cbs if isinstance(cb, StepAwareCallback)
            and overrides(cb, StepAwareCallback, "on_optimizer_step_end")]

    def on_train_epoch_start(self) -> None:
        """Cut the epoch's batches into calls of at most ``step_calls`` optimizer steps that end
        on every scheduled event (:func:`~overparam_lit.models.steps.plan_calls`)."""
        self._epoch_calls = None
        if self.step_calls <= 1:
            return
        trainer = self.trainer
        events = [cb for cb in trainer.callbacks if isinstance(cb, StepAwareCallback)]
        start, num_batches = trainer.global_step, len(trainer.train_dataloader)
        period, total = val_period(trainer.val_check_interval, trainer.check_val_every_n_epoch,
                                   num_batches)
        self._val_steps = (period, 0 if total else start)  # validation where (step - origin) % period == 0

        def next_event(step: int) -> int | None:
            origin = 0 if total else start
            val = origin + ((step - origin) // period + 1) * period
            found = [val, *(s for cb in events if (s := cb.next_event_step(trainer, step)) is not None)]
            return min(found)

        calls = plan_calls(start, num_batches, self.step_calls, next_event, trainer.max_steps)
        self._epoch_calls, self._lightning_val_check = calls, trainer.val_check_batch
        set_epoch_calls(trainer, len(calls))

    def take_epoch_calls(self) -> list[int] | None:
        """The sizes of this epoch's calls for the training batches (read once, by the data
        module's loader when the epoch's iteration starts); ``None``: one batch per step."""
        calls, self._epoch_calls = self._epoch_calls, None
        if calls is not None and all(c == 1 for c in calls):
            return None
        return calls

    def _train_call(self, chunk: StepChunk, batch_idx: int) -> Tensor:
        """Optimizer steps on all but the last batch of ``chunk`` with Lightning's hooks, clipping,
        per-step schedulers and masks in Lightning's order; returns the last batch's loss, whose
        step Lightning takes."""
        trainer = self.trainer
        plugin = trainer.precision_plugin  # converts each batch as Lightning converts one (64-true)
        convert = plugin.convert_input if overrides(plugin, Precision, "convert_input") else None
        batches = iter(chunk) if convert is None else map(convert, chunk)
        if len(chunk) > 1:
            opt = trainer.optimizers[0]
            per_step = [c.scheduler for c in trainer.lr_scheduler_configs if c.interval == "step"]
            hooks = self._inner_hooks
            clip = bool(trainer.gradient_clip_val) or overrides(self, L.LightningModule,
                                                                  "configure_gradient_clipping")
            wrapped = trainer.strategy.model  # DDP syncs a backward it was prepared for
            ddp = wrapped if isinstance(wrapped, DistributedDataParallel) else None
            for _ in range(len(chunk) - 1):
                loss = self._step(next(batches), "train")
                for cb in hooks["on_before_zero_grad"]:
                    cb.on_before_zero_grad(trainer, self, opt)
                self.optimizer_zero_grad(trainer.current_epoch, batch_idx, opt)
                for cb in hooks["on_before_backward"]:
                    cb.on_before_backward(trainer, self, loss)
                if ddp is not None:
                    prepare_for_backward(ddp, loss)
                loss.backward()
                for cb in hooks["on_after_backward"]:
                    cb.on_after_backward(trainer, self)
                for cb in hooks["on_before_optimizer_step"]:
                    cb.on_before_optimizer_step(trainer, self, opt)
                self.on_before_optimizer_step(opt)
                if clip:
                    self.configure_gradient_clipping(opt, trainer.gradient_clip_val,
                                                     trainer.gradient_clip_algorithm)
                opt.step()
                count_inner_steps(trainer, 1)
                for scheduler in per_step:
                    self.lr_scheduler_step(scheduler, None)
                for cb in hooks["on_optimizer_step_end"]:
                    cb.on_optimizer_step_end(trainer, self)
                self._structure.apply_()
            if ddp is not None:  # the call's last backward is Lightning's, prepared by DDP itself
                settle_ddp_buckets(ddp)
        return self._step(next(batches), "train")

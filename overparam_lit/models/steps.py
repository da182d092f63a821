"""Several optimizer steps per Lightning step (``--model.steps_per_call``).

Lightning's per-step bookkeeping (hook dispatch, the optimizer wrapper, the data fetcher, progress
counters) costs about as much as a small net's whole step. A module with ``steps_per_call`` K > 1
therefore receives up to K consecutive batches in one Lightning training step (a
:class:`StepChunk`) and takes an optimizer step after each of them: the first ``n - 1`` inside the
step, the last one through Lightning's own automatic optimisation. The result is exact: the same
batches, hooks, gradient clipping, LR scheduler steps and masks in the same order as K = 1.

Events that happen at a step boundary (a Hessian probe at step ``s``, a widening, IMP's rewind
point, validation every ``val_check_interval`` batches, ``max_steps``) stay on their step because
a call never runs past them: each callback that
acts in ``on_train_batch_end`` at given steps says which (:meth:`StepAwareCallback.next_event_step`)
and :func:`plan_calls` cuts the epoch's batches so that a call ends exactly there. Work that must
follow every optimizer step (masks) goes in :meth:`StepAwareCallback.on_optimizer_step_end`.

A callback that acts in a per-step hook without declaring its steps, and settings whose meaning
is "per Lightning step" (gradient accumulation, a time-based ``val_check_interval``,
``limit_train_batches``, DDP's broadcast of BatchNorm statistics), keep K = 1: ``auto`` chooses
1 and says why; an explicit K > 1 is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

from overparam_lit.utils import ConfigError

AUTO_STEPS = 32
"""Optimizer steps per Lightning step that ``steps_per_call: auto`` takes where it is exact."""

STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
              "on_before_optimizer_step", "on_before_zero_grad")
"""Callback hooks that Lightning calls once per Lightning step."""

MODULE_STEP_METHODS = ("training_step", "on_train_batch_start", "on_train_batch_end", "optimizer_step",
                       "backward", "on_before_backward", "on_after_backward", "on_before_zero_grad",
                       "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
"""Module methods whose override keeps a fit at one optimizer step per Lightning step."""

EXACT_PRECISIONS = ("32-true", "64-true", "32", "64")


class StepAwareCallback(L.Callback):
    """Base of callbacks that act at given optimizer steps and still allow several optimizer steps
    per Lightning step.

    Override :meth:`next_event_step` to name the steps after which your ``on_train_batch_end``
    acts (a call of several steps ends exactly there), and :meth:`on_optimizer_step_end` for work
    that must follow every optimizer step.
    """

    def next_event_step(self, trainer: L.Trainer, step: int) -> int | None:
        """The first global step ``> step`` after whose optimizer step this callback acts in
        ``on_train_batch_end`` (``None``: no such step)."""
        return None

    def on_optimizer_step_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called after every optimizer step of a call of several steps, except the call's last
        (which ``on_train_batch_end`` follows as usual)."""


class StepChunk:
    """Up to K consecutive training batches for one Lightning step, cut lazily from the epoch's
    batches (not a sequence, so Lightning passes it through to ``training_step`` untouched)."""

    def __init__(self, batches: Iterator[Any], size: int) -> None:
        self._batches, self.size = batches, int(size)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self.size):
            yield next(self._batches)


def overrides(obj: object, base: type, name: str) -> bool:
    """Whether ``obj``'s class replaces ``base``'s method ``name``."""
    return getattr(type(obj), name, None) is not getattr(base, name, None)


def inexact_callbacks(callbacks: Sequence[L.Callback]) -> list[str]:
    """Names of callbacks that act in a per-step hook without declaring their steps."""
    out = []
    for cb in callbacks:
        if isinstance(cb, (StepAwareCallback, ProgressBar)):
            continue  # declared steps; progress display only
        per_epoch = isinstance(cb, ModelCheckpoint) and not cb._every_n_train_steps
        if per_epoch and cb._train_time_interval is None:
            continue  # saves per epoch only
        if any(overrides(cb, L.Callback, hook) for hook in STEP_HOOKS):
            out.append(type(cb).__name__)
    return out


def obstacles(trainer: L.Trainer, module: L.LightningModule) -> list[str]:
    """Why this fit must take one optimizer step per Lightning step (empty: K > 1 is exact)."""
    from overparam_lit.data.base import ArrayDataModule
    from overparam_lit.models.base import OverparamModule

    why = []
    loader = trainer.train_dataloader  # None until the fit's data is set up
    if loader is not None and getattr(loader, "calls_fn", None) is None:
        why.append(f"training batches from a {type(loader).__name__} (an overparam-lit data module's loader "
                   "cuts calls of several batches)")
    elif loader is None and not isinstance(trainer.datamodule, ArrayDataModule):
        why.append("training data that is not an overparam-lit data module")
    if trainer.accumulate_grad_batches != 1:
        why.append(f"accumulate_grad_batches={trainer.accumulate_grad_batches}")
    if str(trainer.precision) not in EXACT_PRECISIONS:
        why.append(f"precision={trainer.precision}")
    statistics = any(n.endswith(("running_mean", "running_var")) for n, _ in module.named_buffers())
    if trainer.world_size > 1 and statistics:
        why.append("DDP with BatchNorm statistics (DDP broadcasts them once per Lightning step)")
    if (seconds := getattr(trainer, "_val_check_time_interval", None)) is not None:
        why.append(f"a time-based val_check_interval (every {seconds:g} s)")
    limit = trainer.limit_train_batches  # an int counts batches (fast_dev_run sets 1), a float is a fraction
    if isinstance(limit, int) or limit != 1.0:
        why.append(f"limit_train_batches={limit}")
    for config in trainer.lr_scheduler_configs:
        if config.frequency != 1 or (config.interval == "step" and config.reduce_on_plateau):
            why.append("an LR scheduler with frequency > 1 or a per-step plateau scheduler")
    if not module.automatic_optimization:
        why.append("manual optimisation (the module steps its own optimizers)")
    methods = [m for m in MODULE_STEP_METHODS if overrides(module, OverparamModule, m)]
    if methods:
        why.append(f"{type(module).__name__} overrides {', '.join(methods)}")
    if (names := inexact_callbacks(trainer.callbacks)):
        why.append(f"callbacks acting at every step without declaring their steps: {', '.join(names)}")
    return why


def resolve_steps_per_call(requested: int | str, trainer: L.Trainer, module: L.LightningModule
                           ) -> tuple[int, str]:
    """The K this fit uses and a short reason: ``auto`` takes :data:`AUTO_STEPS` where that is
    exact and 1 otherwise; an explicit K > 1 where it is not exact is refused."""
    why = obstacles(trainer, module)
    if requested == "auto":
        return (1, "one step per call: " + "; ".join(why)) if why else (AUTO_STEPS, "auto")
    k = int(requested)
    if k > 1 and why:
        raise ConfigError(
            f"--model.steps_per_call {k} would not train exactly as one optimizer step per Lightning step "
            f"here: {'; '.join(why)}. Use --model.steps_per_call 1 (or auto, which chooses 1 here), or "
            "remove what stands in the way; a callback that acts at given steps can subclass "
            "overparam_lit.models.steps.StepAwareCallback and declare them.")
    return k, "requested"


def val_period(val_check_interval: float | int, check_val_every_n_epoch: int | None, num_batches: int
               ) -> tuple[int, bool]:
    """Validation every how many optimizer steps, as Lightning counts batches for one step per call
    (an int ``val_check_interval``, or that fraction of the epoch's batches), and whether they are
    counted from the fit's start (``check_val_every_n_epoch`` None) rather than the epoch's."""
    if isinstance(val_check_interval, int) and not isinstance(val_check_interval, bool):
        period = val_check_interval
    else:
        period = max(1, int(num_batches * val_check_interval))
    return int(period), check_val_every_n_epoch is None


def plan_calls(start: int, num_batches: int, k: int, next_event: Any, max_steps: int = -1) -> list[int]:
    """Sizes of the Lightning steps of an epoch of ``num_batches`` batches starting at global step
    ``start``: at most ``k`` each, and every call ends exactly on each step that ``next_event(step)``
    (the first event step ``> step``, or ``None``) names and on ``max_steps``."""
    sizes, done = [], 0
    while done < num_batches:
        step = start + done
        size = min(k, num_batches - done)
        stops = [s for s in (next_event(step), max_steps if max_steps > step else None) if s is not None]
        if stops:
            size = max(1, min(size, min(stops) - step))
        sizes.append(size)
        done += size
    return sizes

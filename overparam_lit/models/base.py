"""``OverparamModule``: the LightningModule every width family and every new study builds on."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from overparam_lit import pruning, registry
from overparam_lit.compat import cheap_cuda_checks, set_epoch_calls, set_val_due
from overparam_lit.models.divergence import DivergenceWatch
from overparam_lit.models.epoch_metrics import EpochMetrics
from overparam_lit.models.network import MemberNetworks
from overparam_lit.models.stack import (
    Member,
    member_grid,
    parse_seeds,
    parse_widths,
)
from overparam_lit.models.step_calls import StepCalls
from overparam_lit.models.steps import StepChunk, resolve_steps_per_call
from overparam_lit.utils import check

Task = Literal["classification", "regression"]


def _default_optimizer(params: object) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)  # type: ignore[arg-type]


class OverparamModule(MemberNetworks, StepCalls, DivergenceWatch, EpochMetrics, L.LightningModule):
    """Base LightningModule of overparam-lit.

    Subclasses override :meth:`build_network` and nothing else: losses, accuracy, the optimizer
    and LR scheduler chosen in YAML, parameter counting, members and the study callbacks keep
    working. Batches are ``(x, y, y_true)``: ``y`` is the label trained on (possibly noisy),
    ``y_true`` the clean one.

    **Members.** ``seeds`` and/or ``widths`` turn the module into a stack of ``widths x seeds``
    networks trained together in one fit (:class:`~overparam_lit.models.stack.StackedNet`).
    Member ``(s, k)`` starts exactly as the single run ``--seed_everything s --model.width k``
    (the family's ``build_network`` at width ``k`` right after seeding torch with ``s``) and sees
    the same batches in the same order, so it trains as that run would. ``forward`` then returns
    ``(M, B, ...)``; the training loss is the sum of the members' mean losses; the logged
    ``train/*``, ``val/*`` and ``test/*`` scalars are means over members, and every member's own
    numbers go to ``members.csv`` in the run folder (and a W&B table).

    Args:
        width: the width ``k`` that scales the family (logged as ``model/width``); with
            ``widths`` the widest member's width is used instead.
        input_shape: shape of one input, linked from ``data.input_shape`` by the CLI.
        num_classes: classes (classification) or output dimension (regression), linked from
            ``data.num_classes``.
        task: ``classification`` (cross-entropy) or ``regression`` (MSE), linked from data.
        optimizer: optimizer factory, chosen in YAML (``class_path: torch.optim.SGD``...).
            Members are exact with element-wise optimizers (SGD, momentum, Adam, AdamW, RMSprop).
        lr_scheduler: optional LR scheduler factory, chosen in YAML.
        lr_scheduler_interval: step the scheduler each ``epoch`` or each ``step``.
        seeds: members' seeds: ``S`` for seeds ``0..S-1``, or a list. ``None`` (default) with no
            ``widths`` is a single model seeded by ``seed_everything``.
        widths: members' widths (narrower members are padded to the widest with fixed masks).
            Without ``seeds`` every width uses the run's seed (``seed_everything``).
        steps_per_call: optimizer steps per Lightning training step, over as many consecutive
            batches: the same weights and rows as 1, with less of Lightning's per-step cost
            (:mod:`overparam_lit.models.steps`). ``auto`` (default) takes several where that is
            exact and 1 otherwise (gradient accumulation, mixed precision, DDP with BatchNorm, a
            time-based ``val_check_interval``, ``limit_train_batches`` or ``fast_dev_run``, data
            that is not an overparam-lit data module's loader, manual optimisation, a callback
            acting at every step without declaring its steps; :attr:`step_calls_reason` says
            which). A call always ends on a scheduled event (probe, widening, rewind point,
            validation, ``max_steps``).
    """

    def __init__(
        self,
        width: int = 64,
        input_shape: Sequence[int] = (1, 40),
        num_classes: int = 10,
        task: Task = "classification",
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        seeds: int | list[int] | None = None,
        widths: list[int] | None = None,
        steps_per_call: int | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        check(
            isinstance(width, int) and not isinstance(width, bool) and width > 0,
            "model width must be a positive integer",
            width,
            "Set --model.width to an integer >= 1, for example 64.",
        )
        check(
            task in ("classification", "regression"),
            "model task must be 'classification' or 'regression'",
            task,
            "Set --model.task (normally linked from the data module) to one of those.",
        )
        check(
            num_classes >= 1 and (task == "regression" or num_classes >= 2),
            "num_classes must be >= 2 for classification and >= 1 for regression",
            num_classes,
            "Check the data module's num_classes.",
        )
        check(
            lr_scheduler_interval in ("epoch", "step"), "lr_scheduler_interval must be 'epoch' or 'step'",
            lr_scheduler_interval, "Set --model.lr_scheduler_interval epoch (or step).",
        )
        self.input_shape = tuple(int(s) for s in input_shape)
        check(
            len(self.input_shape) >= 1 and all(s > 0 for s in self.input_shape),
            "input_shape must be a non-empty tuple of positive sizes",
            self.input_shape,
            "Let the CLI link it from the data module, or pass e.g. [1, 40].",
        )
        seed_list, width_list = parse_seeds(seeds), parse_widths(widths)
        for k in width_list or [width]:
            self.check_width(k)
        self.width = int(max(width_list) if width_list else width)
        self.num_classes = int(num_classes)
        self.task: Task = task
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        whole = isinstance(steps_per_call, int) and not isinstance(steps_per_call, bool)
        check(steps_per_call == "auto" or (whole and steps_per_call >= 1),
              "steps_per_call must be 'auto' or an integer >= 1", steps_per_call,
              "Set --model.steps_per_call auto (default), or 1 for one optimizer step per Lightning step.")
        self.steps_per_call: int | str = steps_per_call
        self.step_calls, self.step_calls_reason = 1, "not resolved yet"  # resolved in setup("fit")
        self._epoch_calls: list[int] | None = None
        self._val_steps: tuple[int, int] | None = None
        # how a fit runs, not what it builds: a checkpoint resumes under any steps_per_call
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "steps_per_call"])
        self.hparams["input_shape"] = list(self.input_shape)  # plain YAML in hparams.yaml
        self.members: list[Member] | None = None
        self.run_seed = int(torch.initial_seed())  # seed_everything's seed, before anything is drawn
        if seed_list is not None or width_list is not None:
            self.members = member_grid(seed_list or [self.run_seed], width_list or [self.width])
            # resolved lists: a checkpoint rebuilds exactly these members
            self.hparams["seeds"] = list(dict.fromkeys(m.seed for m in self.members))
            self.hparams["widths"] = list(dict.fromkeys(m.width for m in self.members))
        # the widest network on the meta device: shapes for estimates and stacking (not a submodule)
        self.__dict__["_template"] = self._meta_network(self.width)
        self._params_per_member = sum(p.numel() for p in self._template.parameters())
        self._check_memory(self.estimate_memory(batch_size=0), "cpu", "to build the model")
        self.net: nn.Module = self._build_net()
        self.member_num_params = self._member_param_counts()
        self.num_params = int(round(sum(self.member_num_params) / len(self.member_num_params)))
        self._build_metrics()
        self._structure = pruning.Masks({})
        self._steps: dict[str, list[tuple[Tensor, int, Tensor | None, int]]] = {}  # the epoch's steps
        self.trained_to: tuple[int, int] | None = None  # (epoch, step) of a loaded checkpoint
        self._first_bad: dict[int, int] = {}  # member -> first step with a non-finite loss
        self._size_logged_by: weakref.ref[L.Trainer] | None = None  # the trainer that logged the size
        self.pruning_masks: dict[str, Tensor] | None = None  # set by a pruning study (protocols.StudyModule)
        self.first_loss: Tensor | None = None  # (M,) training loss of the fit's first step
        self.loss_growth: dict[str, float] | None = None  # the largest growth over LOSS_GROWTH_LIMIT

    # ---- the one method a new study overrides -------------------------------------------
    def build_network(self) -> nn.Module:
        """Return the network mapping a batch of inputs ``(B, *input_shape)`` to outputs
        ``(B, num_classes)``. Read ``self.width``, ``self.input_shape`` and ``self.num_classes``
        here (members build one network per width by setting ``self.width`` before the call)."""
        raise NotImplementedError(
            f"{type(self).__name__} must override build_network() to return an nn.Module."
        )

    def check_width(self, width: int) -> None:
        """Refuse a width this family cannot build (override for extra rules; called for every
        member width before anything is built)."""
        check(
            isinstance(width, int) and not isinstance(width, bool) and width > 0,
            "model width must be a positive integer",
            width,
            "Set --model.width (or every entry of --model.widths) to an integer >= 1.",
        )

    def setup(self, stage: str) -> None:
        """Refuse a fit whose memory estimate exceeds the training device, before any step, and
        resolve ``steps_per_call`` (an explicit K that would not be exact is refused here)."""
        if stage != "fit" or self._trainer is None:
            return
        cheap_cuda_checks()  # each optimizer step asks whether CUDA is available
        dm = getattr(self.trainer, "datamodule", None)
        batch = int(getattr(dm, "batch_size", 0) or 0)
        if batch > 0:
            self._check_memory(self.estimate_memory(batch), self.trainer.strategy.root_device,
                               "to train")
        self.step_calls, self.step_calls_reason = resolve_steps_per_call(self.steps_per_call, self.trainer,
                                                                         self)

    # ---- forward, loss, metrics ---------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Outputs (logits for classification) of the network: ``(B, C)``, or ``(M, B, C)`` for
        members."""
        return self.net(x)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean loss of ``outputs`` against ``targets`` (cross-entropy or MSE) for one network."""
        if self.task == "classification":
            return nn.functional.cross_entropy(outputs, targets)
        return nn.functional.mse_loss(outputs, targets.reshape(outputs.shape))

    def member_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each member's mean loss ``(M,)`` for outputs ``(M, B, ...)`` and one batch of targets
        (``(1,)`` for a single model's ``(B, ...)`` outputs)."""
        if self.members is None:
            return self.loss(outputs, targets).reshape(1)
        if type(self).loss is OverparamModule.loss:  # the default losses without vmap's overhead
            m, b = outputs.shape[0], outputs.shape[1]
            if self.task == "classification":
                ce = nn.functional.cross_entropy(outputs.reshape(m * b, -1), targets.repeat(m),
                                                 reduction="none")
                return ce.reshape(m, b).mean(1)
            return (outputs - targets.reshape(outputs.shape[1:])).pow(2).reshape(m, -1).mean(1)
        return torch.vmap(self.loss, in_dims=(0, None))(outputs, targets)

    def _step(self, batch: Sequence[Tensor], split: str) -> Tensor:
        x, y, y_true = batch
        out = self(x)
        target = y if split == "train" else y_true
        losses = self.member_losses(out, target)
        pred = None  # argmax and detach record no graph
        if self.task == "classification":
            pred = (out if self.members is not None else out.unsqueeze(0)).argmax(dim=-1)
        # a step only keeps references; the epoch's counts and sums are made once, when read
        step = self.trainer.global_step if split == "train" else 0
        self._steps.setdefault(split, []).append((losses.detach(), x.shape[0], pred, y, y_true, step))
        if split == "train":
            self._watch_loss(losses.detach(), step)
        return losses.sum()

    def training_step(self, batch: Sequence[Tensor] | StepChunk, batch_idx: int) -> Tensor:
        """One optimisation step of every member (the sum of their mean losses); for a chunk of
        several batches, a step on each but the last here and the loss of the last."""
        if isinstance(batch, StepChunk):
            return self._train_call(batch, batch_idx)
        return self._step(batch, "train")


    def on_train_epoch_end(self) -> None:
        if self.step_calls > 1:  # back to Lightning's counts in batches between epochs
            set_epoch_calls(self.trainer, len(self.trainer.train_dataloader))
            self.trainer.val_check_batch = self._lightning_val_check
        self._log_epoch("train")
        self._stop_on_divergence()

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_epoch("val")
        else:
            self._steps.pop("val", None)
            self.metric["val_sums"].reset()

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """Predicted class (classification) or output (regression); ``(M, B)`` for members."""
        out = self(batch[0])
        return out.argmax(dim=-1) if self.task == "classification" else out

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:
            self.log_model_size()
        else:  # the resumed fit logged it at its start; the test after the fit does not either
            self._size_logged_by = weakref.ref(self.trainer)
        self._bind_structure()

    def on_test_start(self) -> None:
        self.log_model_size()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_size_logged_by"] = None  # a trainer is not pickled with the module (Lightning's rule)
        return state

    def log_model_size(self, again: bool = False) -> None:
        """Log the model's size to every logger, once per trainer (a fit followed by its test logs
        it once) unless ``again`` (the network changed): ``model/num_params`` and ``model/width``
        when every member has one width, else ``width/<k>/num_params`` for each width ``k`` (a mean
        width or size of a widths fit would match no network)."""
        logged = self._size_logged_by is not None and self._size_logged_by() is self.trainer
        if logged and not again:
            return
        self._size_logged_by = weakref.ref(self.trainer)
        if self.trainer.global_rank == 0:
            sizes = {r["width"]: r["num_params"] for r in self.member_rows()}
            if len(sizes) == 1:
                (width, count), = sizes.items()
                metrics = {"model/num_params": float(count), "model/width": float(width)}
            else:
                metrics = {f"width/{w}/num_params": float(n) for w, n in sizes.items()}
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=self.trainer.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints name their class and width, so ``overparam-lit export`` can rebuild a member
        and a widened network can be rebuilt before its weights load."""
        checkpoint["model_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["model_width"] = self.width
        if self.first_loss is not None:  # the reference of the loss-growth warning
            checkpoint["first_train_loss"] = self.first_loss.double().cpu().tolist()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before the weights load (in a resume and in ``load_from_checkpoint``), every study that
        changes the network's shapes brings it to the checkpoint's (its registered
        ``load_checkpoint``: a network widened during its fit grows back), and a changed network
        gets fresh optimizers. The checkpoint's epoch and step are kept as :attr:`trained_to` (a
        test of it reports them)."""
        self.trained_to = (int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)))
        if checkpoint.get("first_train_loss") is not None:
            self.first_loss = torch.tensor(checkpoint["first_train_loss"], dtype=torch.float64)
        changed = [hook(self, checkpoint) for hook in registry.load_checkpoint_hooks()]
        trainer = self._trainer
        if any(changed) and trainer is not None and trainer.strategy.optimizers:
            from overparam_lit.compat import fresh_optimizers  # restored after the optimizers exist

            fresh_optimizers(trainer, self)

    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks of the studies that attach to this module (:mod:`overparam_lit.registry`):
        members write ``members.csv`` and a W&B table (``MembersTable``). One the trainer already
        has is kept (a test after the fit keeps the fit's table)."""
        have = self.trainer.callbacks if self._trainer is not None else []
        return [cls() for cls in registry.attached_callbacks(self)
                if not any(isinstance(cb, cls) for cb in have)]

    # ---- structural masks of padded members -----------------------------------------------
    def _bind_structure(self) -> None:
        self._structure = pruning.structural_masks(self).bind(dict(self.named_parameters()))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Padding of narrower members gets no gradient (its weights stay exactly zero)."""
        self._structure.mask_grads_()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._structure.apply_()
        if self.step_calls > 1 and self._val_steps is not None:  # validate after this call?
            period, origin = self._val_steps
            set_val_due(self.trainer, (self.trainer.global_step - origin) % period == 0)

    # ---- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> object:
        """Build the optimizer (and scheduler) from the factories chosen in YAML.

        Callbacks that restart training (IMP levels) call this again for a fresh optimizer.
        """
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

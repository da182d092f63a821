"""``OverparamModule``: the LightningModule every width family and every new study builds on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from overparam_lit.utils import check

Task = Literal["classification", "regression"]


class RunningSums(Metric):
    """Element-wise running sums of a fixed-size vector, summed over DDP ranks."""

    full_state_update = False

    def __init__(self, size: int) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(size), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        self.sums += values

    def compute(self) -> Tensor:
        return self.sums


def _default_optimizer(params: object) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)  # type: ignore[arg-type]


class OverparamModule(L.LightningModule):
    """Base LightningModule of overparam-lit.

    Subclasses override :meth:`build_network` and nothing else: losses, torchmetrics accuracy,
    the optimizer and LR scheduler chosen in YAML, parameter counting and the study callbacks
    keep working. Batches are ``(x, y, y_true)``: ``y`` is the label trained on (possibly
    noisy), ``y_true`` the clean one.

    Args:
        width: the width ``k`` that scales the family (logged as ``model/width``).
        input_shape: shape of one input, linked from ``data.input_shape`` by the CLI.
        num_classes: classes (classification) or output dimension (regression), linked from
            ``data.num_classes``.
        task: ``classification`` (cross-entropy) or ``regression`` (MSE), linked from data.
        optimizer: optimizer factory, chosen in YAML (``class_path: torch.optim.SGD``...).
        lr_scheduler: optional LR scheduler factory, chosen in YAML.
        lr_scheduler_interval: step the scheduler each ``epoch`` or each ``step``.
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
    ) -> None:
        super().__init__()
        check(
            isinstance(width, int) and width > 0,
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
        self.width = int(width)
        self.input_shape = tuple(int(s) for s in input_shape)
        check(
            len(self.input_shape) >= 1 and all(s > 0 for s in self.input_shape),
            "input_shape must be a non-empty tuple of positive sizes",
            self.input_shape,
            "Let the CLI link it from the data module, or pass e.g. [1, 40].",
        )
        self.num_classes = int(num_classes)
        self.task: Task = task
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["input_shape"] = list(self.input_shape)  # plain YAML in hparams.yaml
        self.net: nn.Module = self.build_network()
        self.num_params = sum(p.numel() for p in self.net.parameters())
        self._build_metrics()

    # ---- the one method a new study overrides -------------------------------------------
    def build_network(self) -> nn.Module:
        """Return the network mapping a batch of inputs ``(B, *input_shape)`` to outputs
        ``(B, num_classes)``. Read ``self.width``, ``self.input_shape`` and ``self.num_classes``."""
        raise NotImplementedError(
            f"{type(self).__name__} must override build_network() to return an nn.Module."
        )

    # ---- forward, loss, metrics ---------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Outputs (logits for classification) of the network."""
        return self.net(x)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean loss of ``outputs`` against ``targets`` (cross-entropy or MSE)."""
        if self.task == "classification":
            return nn.functional.cross_entropy(outputs, targets)
        return nn.functional.mse_loss(outputs, targets.reshape(outputs.shape))

    def _build_metrics(self) -> None:
        # training steps update one running-sum metric (one cheap update per step); validation
        # and test use torchmetrics' accuracy. Both are reduced over DDP ranks by torchmetrics.
        self.metric = nn.ModuleDict({"train_sums": RunningSums(5)})
        for split in ("val", "test"):
            self.metric[f"{split}_loss"] = MeanMetric()
            if self.task == "classification":
                self.metric[f"{split}_acc"] = MulticlassAccuracy(
                    self.num_classes, average="micro", validate_args=False
                )
                self.metric[f"{split}_acc_noisy"] = MulticlassAccuracy(
                    self.num_classes, average="micro", validate_args=False
                )

    def _step(self, batch: Sequence[Tensor], split: str) -> Tensor:
        x, y, y_true = batch
        out = self(x)
        if split == "train":
            loss = self.loss(out, y)
            with torch.no_grad():
                n = loss.new_full((1,), float(x.shape[0]))
                if self.task == "classification":
                    hit, flipped = out.argmax(dim=1) == y, y != y_true
                    counts = torch.stack([hit.sum(), (hit & flipped).sum(), flipped.sum()])
                else:
                    counts = torch.zeros(3, dtype=torch.long, device=loss.device)
                # [sum of losses, hits on trained labels, hits on flipped labels, flips, samples]
                sums = torch.cat([loss.detach().reshape(1) * n, counts.to(loss.dtype), n])
                self.metric["train_sums"].update(sums)
            return loss
        loss = self.loss(out, y_true)
        self.metric[f"{split}_loss"].update(loss.detach(), x.shape[0])
        if self.task == "classification":
            pred = out.detach().argmax(dim=1)
            self.metric[f"{split}_acc"].update(pred, y_true)
            self.metric[f"{split}_acc_noisy"].update(pred, y)
        return loss

    def _log_epoch(self, split: str) -> None:
        m = self.metric
        if split == "train":
            loss_sum, hits, hits_flipped, flips, n = m["train_sums"].compute().unbind()
            logs = {"train/loss": loss_sum / n.clamp_min(1)}
            if self.task == "classification":
                logs["train/acc"] = hits / n.clamp_min(1)
                if float(flips) > 0:
                    logs["train/acc_noisy_memorized"] = hits_flipped / flips
            m["train_sums"].reset()
        else:
            logs = {f"{split}/loss": m[f"{split}_loss"].compute()}
            if self.task == "classification":
                logs[f"{split}/acc"] = m[f"{split}_acc"].compute()
                logs[f"{split}/acc_noisy"] = m[f"{split}_acc_noisy"].compute()
            for key in list(m.keys()):
                if key.startswith(split):
                    m[key].reset()
        # metrics are already reduced over ranks by torchmetrics
        self.log_dict(logs, sync_dist=False, rank_zero_only=True)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """One optimisation step; per-step logging is kept to accumulation only."""
        return self._step(batch, "train")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_epoch("val")
        else:
            for key in self.metric:
                if key.startswith("val"):
                    self.metric[key].reset()

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """Predicted class (classification) or output (regression)."""
        out = self(batch[0])
        return out.argmax(dim=1) if self.task == "classification" else out

    def on_fit_start(self) -> None:
        self.log_model_size()

    def on_test_start(self) -> None:
        self.log_model_size()

    def log_model_size(self) -> None:
        """Log ``model/num_params`` and ``model/width`` once, to every logger."""
        if self.trainer.global_rank == 0:
            for logger in self.trainer.loggers:
                logger.log_metrics(
                    {"model/num_params": float(self.num_params), "model/width": float(self.width)},
                    step=self.trainer.global_step,
                )

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

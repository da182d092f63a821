"""``SeedEnsemble``: S seeds of an MLP trained together in one Lightning fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from overparam_lit.data.base import TensorBatches
from overparam_lit.escape.ensemble import StackedEnsemble, seed_nets
from overparam_lit.models.base import OverparamModule
from overparam_lit.models.mlp import MLP
from overparam_lit.utils import atomic_save, atomic_write_json, check, log_scalars, run_dir


class SeedEnsemble(OverparamModule):
    """Train S independent seeds of ``MLP(width, depth, activation)`` as one stacked network.

    Seed ``s`` is initialised exactly as ``MLP`` after ``seed_everything(s)`` and draws its own
    batches in the order a single run with ``--data.shuffle_seed s`` sees (the same
    :class:`~overparam_lit.data.base.TensorBatches` permutation, per epoch and per DDP rank).
    The optimizer acts on the stacked parameters; with element-wise optimizers (SGD, Adam,
    AdamW) every seed follows exactly the trajectory of its own single-seed run::

        overparam-lit fit -c configs/teacher_student_escape.yaml --model.width 5 \\
            --seed_everything 3 --data.shuffle_seed 3 --model overparam_lit.models.MLP

    reproduces seed 3 of the ensemble (to float rounding). The data module's own batches only
    set the number of steps per epoch.

    Logged each training epoch: ``ensemble/loss/<s>`` (seed ``s``'s mean training loss over the
    epoch), ``ensemble/loss_mean``, ``ensemble/loss_min``, ``ensemble/successes`` (seeds whose
    loss, divided by the training targets' variance for regression, is below
    ``success_threshold``), ``ensemble/success_rate``, and ``train/loss`` (mean over seeds). Each
    validation: ``ensemble/val_loss/<s>`` and ``val/loss`` (mean). At the end of the fit,
    ``<run_dir>/ensemble/summary.json`` holds the seeds, their final training losses (the full
    training set, in evaluation) and success flags, and ``ensemble/members.pt`` their state dicts.

    Args:
        seeds: list of seeds, or an integer S for seeds ``0..S-1``.
        depth, activation, bias: as in :class:`~overparam_lit.models.MLP`.
        success_threshold: relative-loss threshold of a success (regression: loss / target
            variance; classification: plain loss).
        **kwargs: ``width``, optimizer, scheduler and the linked data arguments.
    """

    def __init__(
        self,
        seeds: int | Sequence[int] = 8,
        depth: int = 1,
        activation: str = "relu",
        bias: bool = True,
        success_threshold: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        if isinstance(seeds, int):
            check(seeds >= 1, "seeds must be >= 1 (or a list of seeds)", seeds,
                  "Set --model.seeds to e.g. 50 or [0, 1, 2].")
            seeds = list(range(seeds))
        seeds = [int(s) for s in seeds]
        check(len(seeds) >= 1 and len(set(seeds)) == len(seeds), "seeds must be distinct and non-empty",
              seeds, "Pass distinct integers, e.g. [0, 1, 2].")
        check(success_threshold > 0, "success_threshold must be positive", success_threshold,
              "Use e.g. 1e-3.")
        self.seeds, self.depth, self.activation, self.bias = seeds, depth, activation, bias
        self.success_threshold = float(success_threshold)
        super().__init__(**kwargs)
        self.hparams["seeds"] = list(seeds)
        self.num_params = self.num_params // len(seeds)  # one member's parameters
        self.target_variance = 1.0
        self._orders: Tensor | None = None
        self._sums = torch.zeros(len(seeds))
        self._counts = 0

    @property
    def num_seeds(self) -> int:
        """S."""
        return len(self.seeds)

    def member_module(self) -> MLP:
        """An ``MLP`` with this ensemble's architecture (its weights are one fresh init)."""
        return MLP(depth=self.depth, activation=self.activation, bias=self.bias, width=self.width,
                   input_shape=self.input_shape, num_classes=self.num_classes, task=self.task)

    def build_network(self) -> nn.Module:
        def factory() -> nn.Module:
            return self.member_module().net

        return StackedEnsemble(seed_nets(factory, self.seeds))

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``(S, B, C)`` of every seed on one batch ``x``."""
        return self.net(x, shared=True)

    def member(self, i: int) -> nn.Module:
        """Seed ``self.seeds[i]``'s network as a standalone ``nn.Sequential``."""
        return self.net.member(i)

    def per_seed_loss(self, out: Tensor, targets: Tensor, shared: bool) -> Tensor:
        """Mean loss of each seed ``(S,)`` for outputs ``(S, B, C)``; ``targets`` are one batch
        ``(B, ...)`` for every seed (``shared``) or one per seed ``(S, B, ...)``."""
        s, b = out.shape[0], out.shape[1]
        if self.task == "classification":
            t = targets.reshape(1, b).expand(s, b) if shared else targets.reshape(s, b)
            ce = nn.functional.cross_entropy(out.reshape(s * b, -1), t.reshape(-1), reduction="none")
            return ce.reshape(s, b).mean(1)
        t = targets.to(out.dtype)
        t = t.reshape(1, *out.shape[1:]) if shared else t.reshape(out.shape)
        return (out - t).pow(2).flatten(1).mean(1)

    # ---- data -------------------------------------------------------------------------------
    def _train_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        dm = getattr(self.trainer, "datamodule", None)
        check(dm is not None and hasattr(dm, "probe_set") and hasattr(dm, "batch_size"),
              "SeedEnsemble needs an overparam-lit ArrayDataModule", type(dm).__name__,
              "Use a data module from overparam_lit.data (e.g. TeacherStudent).")
        check(dm.train_augment() is None, "SeedEnsemble does not support training augmentation",
              type(dm).__name__, "Use a data set without augmentation (TeacherStudent, Toy2D, MNIST1D).")
        return dm.probe_set(None, "train")

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        x, y, _ = self._train_tensors()
        self._x, self._y = x, y
        if self.task == "regression":
            self.target_variance = float(y.float().reshape(y.shape[0], -1).var(0, unbiased=False).mean())
            check(self.target_variance > 0, "training targets are constant", self.target_variance,
                  "Use a data set with varying targets.")

    def on_train_epoch_start(self) -> None:
        trainer, dm = self.trainer, self.trainer.datamodule
        self._x, self._y = self._x.to(self.device), self._y.to(self.device)
        n = self._x.shape[0]
        ar = torch.arange(n)
        orders = []
        for s in self.seeds:
            tb = TensorBatches((ar, ar, ar), dm.batch_size, shuffle=True, seed=s,
                               epoch_fn=lambda: trainer.current_epoch, rank=trainer.global_rank,
                               world_size=trainer.world_size)
            orders.append(torch.cat([b[0] for b in tb]))
        self._orders = torch.stack(orders).to(self._x.device)
        self._batch_size = int(dm.batch_size)
        self._sums = torch.zeros(self.num_seeds, dtype=torch.float64, device=self._x.device)
        self._counts = 0

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """One step of every seed on its own batch; the data module's batch is not used."""
        assert self._orders is not None
        bs = self._batch_size
        idx = self._orders[:, batch_idx * bs : (batch_idx + 1) * bs]
        out = self.net(self._x[idx])
        losses = self.per_seed_loss(out, self._y[idx], shared=False)
        self._sums += losses.detach().double() * idx.shape[1]
        self._counts += idx.shape[1]
        return losses.sum()

    def _relative(self, losses: Tensor) -> Tensor:
        return losses / self.target_variance if self.task == "regression" else losses

    def on_train_epoch_end(self) -> None:
        if self._counts == 0:
            return
        losses = self._sums / self._counts
        if self.trainer.world_size > 1:
            losses = self.trainer.strategy.reduce(losses, reduce_op="mean")
        ok = self._relative(losses) < self.success_threshold
        logs = {f"ensemble/loss/{s}": float(v) for s, v in zip(self.seeds, losses, strict=True)}
        logs.update({"ensemble/loss_mean": float(losses.mean()), "ensemble/loss_min": float(losses.min()),
                     "ensemble/successes": float(ok.sum()), "ensemble/success_rate": float(ok.float().mean()),
                     "train/loss": float(losses.mean()), "epoch": float(self.trainer.current_epoch)})
        log_scalars(self.trainer, logs, step=self.trainer.global_step)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, _, y_true = batch
        losses = self.per_seed_loss(self(x), y_true, shared=True)
        self._val_sums = getattr(self, "_val_sums", 0) + losses.detach().double() * x.shape[0]
        self._val_n = getattr(self, "_val_n", 0) + x.shape[0]

    def on_validation_epoch_end(self) -> None:
        sums, n = getattr(self, "_val_sums", None), getattr(self, "_val_n", 0)
        self._val_sums, self._val_n = 0, 0
        if sums is None or n == 0 or self.trainer.sanity_checking:
            return
        losses = sums / n
        if self.trainer.world_size > 1:
            losses = self.trainer.strategy.reduce(losses, reduce_op="mean")
        logs = {f"ensemble/val_loss/{s}": float(v) for s, v in zip(self.seeds, losses, strict=True)}
        logs["val/loss"] = float(losses.mean())
        log_scalars(self.trainer, logs, step=self.trainer.global_step)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, _, y_true = batch
        self.log("test/loss", self.per_seed_loss(self(x), y_true, shared=True).mean(), batch_size=x.shape[0])

    def on_test_epoch_end(self) -> None:
        pass

    def final_losses(self) -> Tensor:
        """Each seed's loss on the whole training set (evaluation mode, no gradients)."""
        with torch.no_grad():
            return self.per_seed_loss(self(self._x), self._y, shared=True).cpu()

    def on_fit_end(self) -> None:
        losses = self.final_losses()
        rel = self._relative(losses)
        ok = rel < self.success_threshold
        if self.trainer.global_rank == 0:
            folder = run_dir(self.trainer) / "ensemble"
            atomic_write_json({
                "seeds": self.seeds, "width": self.width, "final_loss": losses.tolist(),
                "relative_loss": rel.tolist(), "success": ok.tolist(), "successes": int(ok.sum()),
                "success_rate": float(ok.float().mean()), "target_variance": self.target_variance,
                "success_threshold": self.success_threshold,
            }, folder / "summary.json")
            atomic_save({s: self.member(i).state_dict() for i, s in enumerate(self.seeds)},
                        folder / "members.pt")

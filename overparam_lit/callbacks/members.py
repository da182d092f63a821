"""``MembersTable``: every member's metrics per epoch in ``members.csv`` and a W&B table.

Added by :meth:`OverparamModule.configure_callbacks` to every fit with members. It reads the
module's per-member running sums (:meth:`OverparamModule.member_epoch_metrics`) at the end of
each validation, training and test epoch, before the module resets them, and appends one row per
member and epoch (``member``, ``seed``, ``width``, ``num_params``, ``epoch``, ``step`` and the
train, val and test metrics). The rows reach the disk before each checkpoint, and a resumed fit
cuts the file back to its checkpoint (:class:`~overparam_lit.loggers.CheckpointedCSVCallback`).

A fit of several widths also logs, through the module (so into the same ``metrics.csv`` rows and
W&B steps as ``val/acc``), each width's mean over its members: ``width/<k>/<split>/<metric>``, e.g.
``width/16/val/acc`` (members whose loss is not finite are left out, as in the overall means).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from overparam_lit.loggers import CheckpointedCSVCallback
from overparam_lit.members_table import final_rows, member_columns
from overparam_lit.runfolder import RunFolder


def width_means(rows: list[dict[str, Any]], metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"width/<k>/<key>": mean over the members of width k}`` of per-member ``metrics``
    (``{key: (M,)}``), leaving out members whose loss is not finite; empty when all members have
    one width (the overall means are that width's)."""
    widths = [int(r["width"]) for r in rows]
    if len(set(widths)) < 2:
        return {}
    loss = next((v for k, v in metrics.items() if k.endswith("/loss")), None)
    finite = torch.isfinite(loss) if loss is not None else None
    out: dict[str, torch.Tensor] = {}
    for width in sorted(set(widths)):
        mine = torch.tensor([w == width for w in widths], device=loss.device if loss is not None else None)
        if finite is not None and bool((mine & finite).any()):
            mine = mine & finite
        for key, values in metrics.items():
            out[f"width/{width}/{key}"] = values.detach()[mine.to(values.device)].mean().float()
    return out


class MembersTable(CheckpointedCSVCallback):
    """Writes ``<run>/members.csv`` (one row per member and epoch) and logs a W&B table of the
    members' final metrics, so a double-descent curve or a success rate reads off one run."""

    filename = RunFolder.MEMBERS

    def __init__(self) -> None:
        super().__init__()
        self._val: dict[str, torch.Tensor] = {}

    @property
    def state_key(self) -> str:
        return "MembersTable"

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.columns = member_columns(pl_module.task)
        super().setup(trainer, pl_module, stage)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule,
               metrics: dict[str, torch.Tensor]) -> None:
        epoch, step = trainer.current_epoch, trainer.global_step
        if trainer.state.fn != "fit" and step == 0 and getattr(pl_module, "trained_to", None) is not None:
            epoch, step = pl_module.trained_to  # a test of a checkpoint: the training it holds
        rows = []
        for i, info in enumerate(pl_module.member_rows()):
            row: dict[str, Any] = {**info, "epoch": epoch, "step": step}
            row.update({k: float(v[i]) for k, v in metrics.items()})
            rows.append(row)
        self.write_rows(trainer, rows)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val = pl_module.member_epoch_metrics("val")
            self._log_widths(pl_module, self._val)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = pl_module.member_epoch_metrics("train")
        self._log_widths(pl_module, metrics)
        metrics.update(self._val)
        self._val = {}
        self._write(trainer, pl_module, metrics)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = pl_module.member_epoch_metrics("test")
        self._log_widths(pl_module, metrics)
        self._write(trainer, pl_module, metrics)

    @staticmethod
    def _log_widths(pl_module: L.LightningModule, metrics: dict[str, torch.Tensor]) -> None:
        """Log each width's mean of ``metrics`` (``width/<k>/<key>``) when the members have more
        than one width."""
        logs = width_means(pl_module.member_rows(), metrics)
        if logs:  # already reduced over ranks
            pl_module.log_dict(logs, sync_dist=False, rank_zero_only=True)

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_end(trainer, pl_module)
        self._log_table(trainer, "members/test")

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        self._log_table(trainer, "members/final")

    def _log_table(self, trainer: L.Trainer, key: str) -> None:
        if trainer.global_rank != 0 or self.csv is None:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        last = final_rows(self.csv.read()) if loggers else []
        if not last:
            return
        columns = [c for c in [*self.csv.columns, "best/val_acc"] if any(c in r for r in last)]
        data = [[r.get(c) for c in columns] for r in last]
        for logger in loggers:
            logger.log_table(key=key, columns=columns, data=data)


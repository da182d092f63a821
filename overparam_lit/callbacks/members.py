"""``MembersTable``: every member's metrics per epoch in ``members.csv`` and a W&B table.

Added by :meth:`OverparamModule.configure_callbacks` to every fit with members. It reads the
module's per-member running sums (:meth:`OverparamModule.member_epoch_metrics`) at the end of
each validation, training and test epoch, before the module resets them, and appends one row per
member and epoch (``member``, ``seed``, ``width``, ``num_params``, ``epoch``, ``step`` and the
train, val and test metrics) before the epoch's checkpoint is written.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

SPLIT_KEYS = {
    "classification": ("loss", "acc", "acc_noisy"),
    "regression": ("loss",),
}


def member_columns(task: str) -> list[str]:
    """Columns of ``members.csv`` for a task."""
    cols = ["member", "seed", "width", "num_params", "epoch", "step"]
    for split in ("train", "val", "test"):
        for key in SPLIT_KEYS[task]:
            if split == "train" and key == "acc_noisy":
                key = "acc_noisy_memorized"
            cols.append(f"{split}/{key}")
    return cols


class MembersTable(L.Callback):
    """Writes ``<run>/members.csv`` (one row per member and epoch) and logs a W&B table of the
    members' final metrics, so a double-descent curve or a success rate reads off one run."""

    def __init__(self) -> None:
        self._val: dict[str, torch.Tensor] = {}
        self._table: CsvTable | None = None

    @property
    def state_key(self) -> str:
        return "MembersTable"

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the training state is restored: a resumed fit keeps the rows up to its step
        if trainer.global_rank == 0:
            path = Path(trainer.default_root_dir) / "members.csv"
            self._table = CsvTable(path, member_columns(pl_module.task))
            self._table.resume(trainer.global_step if trainer.ckpt_path else None)

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0 and self._table is None:
            path = Path(trainer.default_root_dir) / "members.csv"
            self._table = CsvTable(path, member_columns(pl_module.task))
            self._table.resume(trainer.global_step if path.is_file() else None)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule,
               metrics: dict[str, torch.Tensor]) -> None:
        if trainer.global_rank != 0 or self._table is None:
            return
        rows = []
        for i, info in enumerate(pl_module.member_rows()):
            row: dict[str, Any] = {**info, "epoch": trainer.current_epoch, "step": trainer.global_step}
            row.update({k: float(v[i]) for k, v in metrics.items()})
            rows.append(row)
        self._table.append(rows)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val = pl_module.member_epoch_metrics("val")

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = pl_module.member_epoch_metrics("train")
        metrics.update(self._val)
        self._val = {}
        self._write(trainer, pl_module, metrics)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, pl_module.member_epoch_metrics("test"))
        self._log_table(trainer, "members/test")

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_table(trainer, "members/final")

    def _log_table(self, trainer: L.Trainer, key: str) -> None:
        if trainer.global_rank != 0 or self._table is None:
            return
        last = self._table.last_by("member")
        if not last:
            return
        columns = self._table.columns
        data = [[row.get(c) for c in columns] for row in last]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=key, columns=columns, data=data)


class CsvTable:
    """An append-only CSV file with fixed columns (rows past a resumed checkpoint are dropped)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = Path(path), list(columns)
        self.rows: list[dict[str, Any]] = []

    def resume(self, step: int | None) -> None:
        """Keep the rows up to ``step`` (a resumed checkpoint's); ``None`` starts a new file."""
        if step is None or not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite([])
            return
        with open(self.path, newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= step]
        self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.rows = [dict(r) for r in rows]

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows and flush them to disk."""
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        self.rows += [dict(r) for r in rows]

    def last_by(self, key: str) -> list[dict[str, Any]]:
        """Per value of ``key``, the last non-empty value of every column."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            merged = out.setdefault(str(r[key]), {})
            merged.update({k: v for k, v in r.items() if v not in (None, "")})
        return list(out.values())

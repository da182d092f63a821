"""Loggers of a run folder: ``metrics.csv`` kept consistent with the checkpoints, and W&B runs
that carry the whole config.

The CSV machinery is reusable by any writer of a run-folder table (``members.csv``), on
:class:`~overparam_lit.csv_table.CheckpointedCSV` (pure, re-exported here):

- :class:`CheckpointedCSVCallback` is a Lightning callback base that does the wiring: it opens the
  file in the run folder on rank zero, returns the CSV's state from ``state_dict()`` (Lightning
  calls it while it builds every checkpoint, before the file is written) and truncates in
  ``load_state_dict()`` when a fit resumes. A subclass sets ``filename`` (and optionally
  ``columns``) and calls :meth:`~CheckpointedCSVCallback.write_rows`::

      class MembersTable(CheckpointedCSVCallback):
          filename = RunFolder.MEMBERS            # "members.csv"

          def on_train_epoch_end(self, trainer, pl_module):
              self.write_rows(trainer, [{"member": i, "epoch": trainer.current_epoch, ...} for i in ...])

- :class:`RunCSVLogger` is the Lightning logger of ``metrics.csv`` (and ``hparams.yaml``) built on
  a :class:`CheckpointedCSV`; :class:`MetricsCSVCheckpoint` is the callback that puts its state
  into checkpoints (the CLI adds both).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from overparam_lit.csv_table import CheckpointedCSV
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_write, fsync_deferred, fsync_path

__all__ = [
    "CheckpointedCSV",
    "CheckpointedCSVCallback",
    "MetricsCSVCheckpoint",
    "RunCSVLogger",
    "RunWandbLogger",
    "flatten_config",
]


class CheckpointedCSVCallback(L.Callback):
    """Base of callbacks that write a table into the run folder through a :class:`CheckpointedCSV`.

    Subclasses set :attr:`filename` (a name from :class:`~overparam_lit.runfolder.RunFolder`, e.g.
    ``RunFolder.MEMBERS``) and optionally :attr:`columns`, and call :meth:`write_rows`. The base
    opens the file on rank zero in ``setup``, hands the CSV state to every checkpoint (rows are
    flushed and fsynced before the checkpoint file is written) and, on resume, cuts the file back
    to the checkpoint's rows. Rows written on other ranks are ignored.
    """

    filename: str = "table.csv"
    columns: Sequence[str] | None = None

    def __init__(self) -> None:
        self.csv: CheckpointedCSV | None = None
        self._resume_state: dict[str, Any] | None = None

    def open_csv(self, trainer: L.Trainer) -> CheckpointedCSV | None:
        """The CSV of this callback in the trainer's run folder (rank zero), else ``None``."""
        if trainer.global_rank != 0:
            return None
        return CheckpointedCSV(RunFolder.of(trainer).root / self.filename, self.columns)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.csv is None:
            self.csv = self.open_csv(trainer)
        if self.csv is not None and self._resume_state is not None:
            self.csv.load_state_dict(self._resume_state)
            self._resume_state = None

    def write_rows(self, trainer: L.Trainer, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows (rank zero only; they reach the disk before the next checkpoint)."""
        if self.csv is not None and trainer.global_rank == 0:
            self.csv.extend(rows)

    def state_dict(self) -> dict[str, Any]:
        return self.csv.state_dict() if self.csv is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.load_state_dict(state_dict)
        else:
            self._resume_state = dict(state_dict)

    def _flush(self) -> None:
        if self.csv is not None:
            self.csv.flush(sync=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":  # a standalone `validate` (fits flush at their checkpoints)
            self._flush()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """Rows reach the disk; a fit stopped by a signal that will resume from its checkpoint
        cuts them back to it instead (:func:`~overparam_lit.checkpointing.resumes_after_stop`)."""
        from overparam_lit.checkpointing import resumes_after_stop

        if self.csv is not None and resumes_after_stop(trainer, exception):
            self.csv.rewind()
        else:
            self._flush()


class RunCSVLogger(Logger):
    """Writes ``metrics.csv`` and ``hparams.yaml`` into the run folder (the layout of Lightning's
    ``CSVLogger``: one row per logging step, a ``step`` column, columns sorted), through a
    :class:`CheckpointedCSV`, so that with :class:`MetricsCSVCheckpoint` a resumed fit continues the
    same file with neither lost nor repeated rows.

    Args:
        save_dir: the run folder.
        flush_logs_every_n_steps: also flush buffered rows every N logging steps (checkpoints
            and the end of a fit always flush).
    """

    def __init__(self, save_dir: str | Path, flush_logs_every_n_steps: int = 100) -> None:
        super().__init__()
        self.folder = RunFolder(save_dir)
        self.csv = CheckpointedCSV(self.folder.metrics_csv)
        self.hparams: dict[str, Any] = {}
        self._flush_every = max(1, int(flush_logs_every_n_steps))
        self._logged = 0
        self._hparams_unsynced = False

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.folder.root)

    @property
    def root_dir(self) -> str:
        return str(self.folder.root)

    @property
    def log_dir(self) -> str:
        return str(self.folder.root)

    @property
    def experiment(self) -> CheckpointedCSV:
        """The :class:`CheckpointedCSV` of ``metrics.csv``."""
        return self.csv

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        if isinstance(params, Namespace):
            params = vars(params)
        self.hparams.update(dict(params or {}))
        hparams = dict(self.hparams)
        # on disk when the fit ends (finalize), with metrics.csv
        atomic_write(self.folder.hparams_yaml, lambda tmp: save_hparams_to_yaml(tmp, hparams), sync=False)
        self._hparams_unsynced = True

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = {k: v for k, v in metrics.items() if k != "step"}
        row["step"] = self._logged if step is None else int(step)
        self.csv.append(row)
        self._logged += 1
        if (row["step"] + 1) % self._flush_every == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        """Write the buffered rows (Lightning asks after every logging step). They wait for the
        disk only when a checkpoint refers to them or the fit ends (:meth:`finalize`); a killed
        process loses none of them."""
        with fsync_deferred():
            self.csv.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """The end of a fit (or test): the rows and ``hparams.yaml`` wait for the disk."""
        if self._hparams_unsynced:
            fsync_path(self.folder.hparams_yaml)
        self.csv.flush(sync=True)
        if self._hparams_unsynced:
            fsync_path(self.folder.root)  # its folder entry (at once when metrics.csv's was synced)
            self._hparams_unsynced = False


class MetricsCSVCheckpoint(CheckpointedCSVCallback):
    """Puts the state of the run's :class:`RunCSVLogger` (``metrics.csv``) into every checkpoint
    and cuts the file back to it on resume."""

    filename = RunFolder.METRICS

    @property
    def state_key(self) -> str:
        return "MetricsCSV"

    def open_csv(self, trainer: L.Trainer) -> CheckpointedCSV | None:
        if trainer.global_rank != 0:
            return None
        return next((lg.csv for lg in trainer.loggers if isinstance(lg, RunCSVLogger)), None)

    def write_rows(self, trainer: L.Trainer, rows: Iterable[Mapping[str, Any]]) -> None:
        raise TypeError("metrics.csv is written through the trainer's loggers (self.log / log_scalars).")


# ---- W&B ---------------------------------------------------------------------------------------
class RunWandbLogger(WandbLogger):
    """``WandbLogger`` whose run config is the whole resolved config (see :func:`flatten_config`),
    given at ``wandb.init``; the model's own hyperparameters, which Lightning logs again at the
    start of a fit, are already in it as ``model.*`` and are not repeated as top-level keys.

    Args:
        run_config: flat config of the run (dotted keys).
        **kwargs: :class:`~lightning.pytorch.loggers.WandbLogger` arguments (and ``wandb.init``
            ones such as ``job_type``).
    """

    def __init__(self, run_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if run_config is not None:
            kwargs["config"] = dict(run_config)
        super().__init__(**kwargs)
        from overparam_lit.compat import drop_wandb_anonymous

        drop_wandb_anonymous(self)
        self.run_config = dict(run_config) if run_config is not None else None

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        if self.run_config is None:
            super().log_hyperparams(params, *args, **kwargs)


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _wandb_value(value: Any) -> Any:
    """A config value as W&B stores it: plain types, lists, names of callables, else text."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_wandb_value(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return str(value)


def _is_class_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and "class_path" in value


def flatten_config(config: Mapping[str, Any] | Namespace) -> dict[str, Any]:
    """The resolved CLI config as flat dotted keys for a W&B run config.

    ``init_args`` levels are dropped (``model.init_args.width`` -> ``model.width``), each class
    keeps a readable ``*.class_path``, the optimizer and LR scheduler move to the top
    (``optimizer.lr``, ``lr_scheduler.class_path``), callbacks are listed by class name
    (``callbacks: "HessianProbe, IterativeMagnitudePruning"``) with their arguments under
    ``callbacks.<Name>.<arg>``, and loggers are left out. Example keys: ``data.label_noise``,
    ``model.width``, ``optimizer.lr``, ``seed_everything``, ``trainer.max_epochs``.
    """
    if isinstance(config, Namespace) or hasattr(config, "as_dict"):
        config = config.as_dict() if hasattr(config, "as_dict") else vars(config)
    config = dict(config)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if _is_class_spec(value):
            out[f"{prefix}.class_path"] = value["class_path"]
            for source in ("init_args", "dict_kwargs"):
                for k, v in (value.get(source) or {}).items():
                    walk(f"{prefix}.{k}", v)
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        out[prefix] = _wandb_value(value)

    model = config.pop("model", None)
    if _is_class_spec(model):
        args = dict(model.get("init_args") or {})
        for key in ("optimizer", "lr_scheduler"):
            if key in args:
                walk(key, args.pop(key))
        walk("model", {**model, "init_args": args})
    elif model is not None:
        walk("model", model)
    trainer = dict(config.pop("trainer", None) or {})
    callbacks = trainer.pop("callbacks", None) or []
    trainer.pop("logger", None)
    trainer.pop("plugins", None)
    if _is_class_spec(callbacks):
        callbacks = [callbacks]
    names: list[str] = []
    for cb in callbacks if isinstance(callbacks, list) else []:
        if not _is_class_spec(cb):
            continue
        name = _short(cb["class_path"])
        label = name if name not in names else f"{name}_{names.count(name) + 1}"
        names.append(name)
        for k, v in (cb.get("init_args") or {}).items():
            walk(f"callbacks.{label}.{k}", v)
    out["callbacks"] = ", ".join(names)
    walk("trainer", trainer)
    configs = config.pop("config", None)
    if configs:
        out["config_files"] = [str(getattr(c, "relative", c)) for c in configs]
    for key in ("subcommand", "__path__"):
        config.pop(key, None)
    walk("", config)
    return out

"""Weights & Biases: the ``--wandb.*`` options, the choice of online or offline, the run's loggers
(CSV always, W&B unless disabled) and the x axes of its dashboard series."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, WandbLogger

from overparam_lit.compat import wandb_run_if_started
from overparam_lit.entry import start_wandb
from overparam_lit.loggers import RunCSVLogger, RunWandbLogger
from overparam_lit.wandb_mode import resolve_wandb_mode


@dataclass
class WandbOptions:
    """Weights & Biases settings.

    Args:
        mode: ``auto`` is online when an API key is configured (``WANDB_API_KEY`` or
            ``wandb login``) and offline otherwise; ``offline`` writes a local run to sync later
            with ``wandb sync``; ``disabled`` turns W&B off (CSV metrics are always written).
            A ``WANDB_MODE`` environment variable overrides ``auto``.
        project: W&B project.
        name: run name (default: the run folder's name).
        group: run group, e.g. a sweep's name, so dashboards group its runs (default: the sweep
            folder of a sweep point ``OUT/points/<point>``).
        tags: run tags (the model and data class names are always added).
    """

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "overparam-lit"
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


def make_loggers(root: Path, options: WandbOptions, wandb_config: Mapping[str, Any] | None = None,
                 job_type: str | None = None) -> list[Logger]:
    """The CSV logger of ``root/metrics.csv`` (first, so the trainer's log folder is ``root``)
    and, unless disabled, a W&B run whose config is ``wandb_config`` (flat dotted keys)."""
    loggers: list[Logger] = [RunCSVLogger(root)]
    mode = resolve_wandb_mode(options.mode)
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"
        root = Path(root)
        group = options.group
        if group is None and root.parent.name == "points":  # a fit of `overparam-lit sweep` (OUT/points)
            group = root.parent.parent.name or None
        tags = list(options.tags)
        for key in ("model.class_path", "data.class_path"):
            if wandb_config and wandb_config.get(key):
                tags.append(str(wandb_config[key]).rsplit(".", 1)[-1])
        loggers.append(RunWandbLogger(  # an absolute folder: W&B's service process has its own cwd
            run_config=wandb_config, save_dir=str(root.resolve()), project=options.project,
            name=options.name or root.name, group=group, tags=list(dict.fromkeys(tags)) or None,
            job_type=job_type, offline=mode == "offline", log_model=False,
        ))
    return loggers


def start_wandb_service(loggers: Iterable[Logger], offline: bool) -> None:
    """Start W&B's service process for the W&B run of :func:`make_loggers` that the fit is about to
    start (rank zero; ``offline`` as resolved there), and wait for it.

    ``wandb.init`` starts the service and waits for it (a fifth of a second), then imports W&B's
    launch-inputs module (half a second in a process that has loaded Lightning).
    :func:`~overparam_lit.entry.start_wandb` starts the service in a thread (``wandb.setup``, W&B's
    own way to start it early) while this thread imports that module; ``wandb.init`` then finds
    both ready and starts the run as it would have. After the command's early start
    (:mod:`overparam_lit.entry`) both are there already."""
    if not any(isinstance(lg, RunWandbLogger) and wandb_run_if_started(lg) is None for lg in loggers):
        return
    import wandb

    if wandb.run is not None:
        return
    service = start_wandb("offline" if offline else "online")
    if service is not None:
        service.join()


class DefineWandbAxes(Callback):
    """Gives level-wise, probe-wise and snapshot-wise series their own x axis in W&B dashboards:
    ``imp/*`` against ``imp/level``, ``hessian/*`` against ``hessian/step`` and ``regions/*``
    against ``regions/epoch``."""

    AXES = (("imp/level", "imp/*"), ("hessian/step", "hessian/*"), ("regions/epoch", "regions/*"))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                for axis, series in self.AXES:
                    run.define_metric(axis)
                    run.define_metric(series, step_metric=axis)

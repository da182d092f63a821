"""``overparam-lit``: a LightningCLI that links data to model, names run folders and sets up logging.

Usage: ``overparam-lit fit -c configs/quickstart.yaml [-c callbacks/hessian.yaml] [--key value]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger

import overparam_lit.data  # noqa: F401  (registers data modules for short names)
import overparam_lit.models  # noqa: F401  (registers width families for short names)
from overparam_lit.data.base import ArrayDataModule
from overparam_lit.loggers import AppendingCSVLogger
from overparam_lit.models.base import OverparamModule
from overparam_lit.utils import ConfigError, atomic_write_text

RUN_DIR_ENV = "OVERPARAM_LIT_RUN_DIR"


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
        group: run group, e.g. a sweep's name, so dashboards group its runs.
        tags: run tags.
    """

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "overparam-lit"
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


def wandb_has_credentials() -> bool:
    """True when an API key is configured through the environment or ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """Turn ``auto`` into ``online`` or ``offline``; never prompts and never waits on a network."""
    env = os.environ.get("WANDB_MODE", "").lower()
    if mode == "auto":
        if env in ("online", "offline", "disabled"):
            return env
        if env == "dryrun":
            return "offline"
        return "online" if wandb_has_credentials() else "offline"
    return mode


def make_loggers(root: Path, options: WandbOptions) -> list[Logger]:
    """CSV logger writing ``root/metrics.csv`` (first, so the run folder is ``root``; a resumed
    fit appends to it) and W&B."""
    loggers: list[Logger] = [AppendingCSVLogger(save_dir=str(root), name="", version="")]
    mode = resolve_wandb_mode(options.mode)
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"
        loggers.append(
            WandbLogger(
                save_dir=str(root),
                project=options.project,
                name=options.name or root.name,
                group=options.group,
                tags=list(options.tags) or None,
                offline=mode == "offline",
                log_model=False,
            )
        )
    return loggers


class SaveRunConfig(SaveConfigCallback):
    """Saves the whole config as ``config.yaml`` in the run folder; an older one from an earlier
    fit in the same folder (a resume) is kept as ``config.yaml.<time>.bak``.

    Values the CLI links from the data module into the model are appended as comments (they
    are recomputed when the file is used again with ``-c``).
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # every rank calls this: it broadcasts the folder
        if trainer.is_global_zero and log_dir is not None:
            path = Path(log_dir) / self.config_filename
            if path.exists():
                shutil.move(path, path.with_name(f"{path.name}.{int(path.stat().st_mtime)}.bak"))
            # the config was checked when it was parsed; dumping it again unchecked is fast
            text = self.parser.dump(self.config, skip_none=False, skip_check=True)
            linked = {k: getattr(pl_module, k, None) for k in ("input_shape", "num_classes", "task")}
            text += "# linked from the data module at run time:\n" + "".join(
                f"#   model.init_args.{k}: {list(v) if isinstance(v, tuple) else v}\n"
                for k, v in linked.items()
            )
            atomic_write_text(text, path)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class DefineWandbAxes(Callback):
    """Gives level-wise and snapshot-wise series their own x axis in W&B dashboards:
    ``imp/*`` against ``imp/level`` and ``regions/*`` against ``regions/epoch``."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                run = logger.experiment
                for axis, series in (("imp/level", "imp/*"), ("regions/epoch", "regions/*")):
                    run.define_metric(axis)
                    run.define_metric(series, step_metric=axis)


class OverparamCLI(LightningCLI):
    """LightningCLI for overparam-lit.

    - ``data.input_shape``, ``data.num_classes`` and ``data.task`` flow into the model.
    - ``--model MLP --data MNIST1D`` short names work for every family and data module.
    - Each run gets a folder (``--trainer.default_root_dir``, default ``runs/<time>``) holding
      ``config.yaml``, ``metrics.csv``, ``checkpoints/`` and the callbacks' artifacts.
    - Loggers default to CSV plus W&B (see ``--wandb.*``); a logger given under
      ``trainer.logger`` replaces them.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(OverparamModule, ArrayDataModule, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.input_shape", "model.init_args.input_shape", compute_fn=list, apply_on="instantiate"
        )
        for key in ("num_classes", "task"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_class_arguments(WandbOptions, "wandb")

    def _run_dir(self, config: dict[str, Any]) -> Path:
        if config.get("default_root_dir"):
            return Path(config["default_root_dir"])
        # DDP children re-run this command: they inherit the folder chosen by rank zero
        if RUN_DIR_ENV not in os.environ:
            os.environ[RUN_DIR_ENV] = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
        return Path(os.environ[RUN_DIR_ENV])

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        root = self._run_dir(config)
        config["default_root_dir"] = str(root)
        if config.get("logger") in (None, True):
            sub = self.config.get(str(self.subcommand), self.config)
            config["logger"] = make_loggers(root, WandbOptions(**dict(sub["wandb"])))
        callbacks = list(callbacks) + [DefineWandbAxes()]
        user_callbacks = config.get("callbacks") or []
        has_ckpt = any(isinstance(c, ModelCheckpoint) for c in user_callbacks)
        has_bar = any(isinstance(c, ProgressBar) for c in user_callbacks)
        if config.get("enable_progress_bar", True) is not False and not has_bar:
            # redrawing the bar every step costs more than a small model's step
            callbacks.append(TQDMProgressBar(refresh_rate=10))
        if config.get("enable_checkpointing", True) is not False and not has_ckpt:
            callbacks.append(
                ModelCheckpoint(dirpath=str(root / "checkpoints"), filename="{epoch:03d}", save_last=True)
            )
        return super()._instantiate_trainer(config, callbacks)


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The :class:`ConfigError` behind ``err`` (jsonargparse and Lightning wrap exceptions)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Console entry point: run the CLI, printing bad-input errors as one paragraph.

    The working folder is importable, so ``--model my_study.MyNet`` finds ``./my_study.py``.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        OverparamCLI(args=args)
    except Exception as err:
        config_error = find_config_error(err)
        if config_error is None:
            raise
        print(f"overparam-lit: error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

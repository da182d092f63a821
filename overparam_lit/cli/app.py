"""The LightningCLI of ``overparam-lit``: links data to model, runs the checks (:mod:`.checks`),
chooses, locks and accepts the run folder, builds the trainer with its loggers, checkpoints and
progress output, and ends a fit with the test split and a summary."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import overparam_lit.callbacks  # noqa: F401  (registers study callbacks for short names)
import overparam_lit.data  # noqa: F401  (registers data modules for short names)
import overparam_lit.models  # noqa: F401  (registers width families for short names)
from overparam_lit import stopping
from overparam_lit.checkpointing import AtomicCheckpointIO, EpochBoundary, RunCheckpoint, StopOnSignal
from overparam_lit.cli.checks import (
    _as_dict,
    check_checkpoint_callbacks,
    check_checkpoint_matches,
    check_optimizer_config,
    check_run_folder,
    check_seed,
    check_trainer_config,
    resolve_last_checkpoint,
)
from overparam_lit.cli.console import EpochLines, print_run_summary, sweep_block_note
from overparam_lit.cli.parser import OverparamArgumentParser
from overparam_lit.cli.save_config import SaveRunConfig
from overparam_lit.cli.wandb import (
    DefineWandbAxes,
    WandbOptions,
    make_loggers,
    resolve_wandb_mode,
    start_wandb_service,
)
from overparam_lit.compat import wandb_run_if_started
from overparam_lit.data.base import ArrayDataModule
from overparam_lit.entry import settle_early_wandb
from overparam_lit.loggers import MetricsCSVCheckpoint, RunCSVLogger, flatten_config
from overparam_lit.models.base import OverparamModule
from overparam_lit.runfolder import RunFolder, RunLock, read_checkpoint
from overparam_lit.threads import ENV as THREADS_ENV
from overparam_lit.threads import (
    apply_threads,
    available_cores,
    choose_threads,
    load_average,
    torch_default_threads,
)
from overparam_lit.utils import ConfigError, check, tuples_to_lists

RUN_DIR_ENV = "OVERPARAM_LIT_RUN_DIR"
"""The default run folder chosen by the launching process; DDP child processes inherit it."""


class OverparamCLI(LightningCLI):
    """LightningCLI for overparam-lit.

    - ``data.input_shape``, ``data.num_classes`` and ``data.task`` flow into the model.
    - ``--model MLP --data MNIST1D`` short names work for every family, data module and study
      callback (``--trainer.callbacks.help HessianProbe``).
    - Each run gets a folder (``--trainer.default_root_dir``, default ``runs/<time>``, never an
      existing one) holding ``config.yaml``, ``metrics.csv``, ``checkpoints/`` and the callbacks'
      artifacts (:class:`~overparam_lit.runfolder.RunFolder`). A folder that holds a run takes a
      new fit only as a resume of that run (``--ckpt_path <folder>/checkpoints/last.ckpt``) or with
      ``--overwrite true``; a folder in use by another fit is refused.
    - ``fit`` ends with the test split (``--test_after_fit false`` skips it), a W&B summary and a
      printed summary of the run.
    - Loggers default to CSV plus W&B (see ``--wandb.*``); a logger given under
      ``trainer.logger`` replaces them.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", OverparamArgumentParser)
        self.lock: RunLock | None = None
        self.run_folder: RunFolder | None = None
        self.checkpoint: dict[str, Any] | None = None
        self._reserved: list[Path] = []
        self._set_env: dict[str, str | None] = {}
        self._accepted = False
        self.subcommand: str | None = None
        self.wandb_mode = "disabled"
        try:
            super().__init__(OverparamModule, ArrayDataModule, **kwargs)
        finally:
            self.release()

    # ---- parser ------------------------------------------------------------------------------
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.input_shape", "model.init_args.input_shape", compute_fn=list, apply_on="instantiate"
        )
        for key in ("num_classes", "task"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_class_arguments(WandbOptions, "wandb")
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="Start over in a run folder that holds an earlier run: its artifacts (config.yaml, "
                 "metrics.csv, checkpoints/, imp/, hessian/, regions/, wandb/, ...) are deleted first.")
        parser.add_argument(
            "--threads", type=int | None, default=None,
            help="CPU threads of torch and the BLAS pools. Default: the OVERPARAM_LIT_THREADS or "
                 "OMP_NUM_THREADS environment variable when set, else 1 on a machine with two cores or "
                 "fewer or when the other cores are busy (load average), else torch's default.")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="After fit, evaluate the test split (test/loss, test/acc in metrics.csv and W&B).")
        parser.add_argument(
            "--sweep", type=dict | None, default=None,
            help="The sweep block of a study config (configs/study_*.yaml), read by `overparam-lit sweep`; "
                 "fit ignores it and runs the config's base point.")

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The parser, named ``overparam-lit`` however the CLI was started."""
        kwargs.setdefault("prog", "overparam-lit")
        return super().init_parser(**kwargs)

    def _sub(self) -> Namespace:
        return self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check everything that can be checked on the config alone."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        cfg = self.config.get(subcommand, self.config) if subcommand else self.config
        trainer = _as_dict(cfg.get("trainer")) or {}
        check_seed(cfg.get("seed_everything"))
        check_trainer_config(trainer)
        model = _as_dict(cfg.get("model")) or {}
        check_optimizer_config(model)
        ckpt_path = cfg.get("ckpt_path")
        if subcommand and ckpt_path == "last":
            ckpt_path = cfg["ckpt_path"] = resolve_last_checkpoint(trainer.get("default_root_dir"))
        if subcommand and ckpt_path and str(ckpt_path) not in ("best", "hpc") \
                and not str(ckpt_path).startswith("registry"):
            self.checkpoint = read_checkpoint(ckpt_path)
            check_checkpoint_matches(self.checkpoint, model, str(ckpt_path), cfg.get("seed_everything"))
            if subcommand == "fit":
                check_checkpoint_callbacks(self.checkpoint, trainer.get("callbacks"), str(ckpt_path))
        if subcommand is None:
            return
        self.set_threads(subcommand, cfg.get("threads"))
        explicit = trainer.get("default_root_dir")
        if explicit:
            folder = RunFolder(explicit)
            folder.check_writable()
            if not self._launch_rank_zero():
                return
            resuming = bool(ckpt_path) and folder.owns(ckpt_path) and folder.holds_run()
            RunLock(folder.lock_file).check_free()  # taken (and checked again) once the fit is accepted
            if subcommand == "fit":
                check_run_folder(folder, ckpt_path, bool(cfg.get("overwrite")))  # again under the lock
                self.save_config_kwargs["keep_old"] = resuming
            elif folder.config_yaml.exists():
                self.save_config_kwargs["config_filename"] = f"config.{subcommand}.yaml"
        else:
            RunFolder("runs").check_writable()

    def set_threads(self, subcommand: str, flag: int | None) -> None:
        """Choose and apply the thread count (:mod:`overparam_lit.threads`) and say so in the first
        line printed; processes this one starts (DDP ranks) inherit the choice."""
        choice = choose_threads(available_cores(), load_average(), os.environ, flag, torch_default_threads())
        self._set_env.update({k: None for k in apply_threads(choice.threads) if k not in self._set_env})
        if os.environ.get(THREADS_ENV) != str(choice.threads):
            self._set(THREADS_ENV, str(choice.threads))
        if self._launch_rank_zero():  # torch's own count, read back
            print(f"overparam-lit {subcommand}: threads {torch.get_num_threads()} ({choice.reason})",
                  flush=True)

    # ---- the run folder -------------------------------------------------------------------------
    @staticmethod
    def _launch_rank_zero() -> bool:
        """False in processes another launcher started as a non-zero rank (DDP children of this
        CLI, torchrun or SLURM ranks): they trust rank zero's checks and lock."""
        for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
            value = os.environ.get(key)
            if value not in (None, "", "0"):
                return False
        return True

    def _set(self, key: str, value: str) -> None:
        self._set_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def _run_dir(self, config: dict[str, Any]) -> Path:
        if config.get("default_root_dir"):
            return Path(config["default_root_dir"])
        # DDP children re-run this command: they inherit the folder chosen by rank zero
        if os.environ.get(RUN_DIR_ENV):
            return Path(os.environ[RUN_DIR_ENV])
        base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        if not self._launch_rank_zero():
            return base
        folder, created = RunFolder.reserve(base)
        self._reserved += created
        self._set(RUN_DIR_ENV, str(folder.root))
        return folder.root

    def _accept_run_folder(self, subcommand: str) -> None:
        """Lock the run folder and decide whether this fit may use it (under the lock)."""
        if not self._launch_rank_zero() or self.run_folder is None:
            return
        sub = self._sub()
        folder = self.run_folder
        self.lock = RunLock(folder.lock_file).acquire()
        if self.lock.inherited:
            return
        if subcommand == "fit" and check_run_folder(folder, sub.get("ckpt_path"), bool(sub.get("overwrite"))):
            folder.clear()
        folder.remove_stale_temporaries()  # half-written files of a killed fit (we hold the lock)
        self._accepted = True

    def _check_instantiated(self) -> None:
        """Checks that need the model and trainer: the checkpoint's hyperparameters against the
        model as built (linked values included), and a trial of the optimizer and scheduler."""
        sub = self._sub()
        if self.checkpoint is not None and isinstance(self.model, LightningModule):
            saved = dict(self.checkpoint.get("hyper_parameters") or {})
            diffs = [f"model.{k}: checkpoint {v!r}, model {tuples_to_lists(self.model.hparams[k])!r}"
                     for k, v in saved.items() if not k.startswith("_") and k in self.model.hparams
                     and tuples_to_lists(v) != tuples_to_lists(self.model.hparams[k])]
            check(not diffs, "--ckpt_path holds a different model than the one built: " + "; ".join(diffs),
                  str(sub.get("ckpt_path")), "Resume with the data and model settings the checkpoint was "
                  "trained with (for example -c <run>/config.yaml), or drop --ckpt_path.")
        factory = getattr(self.model, "optimizer_factory", None)
        if callable(factory):
            probe = torch.nn.Parameter(torch.zeros(1))
            try:
                optimizer = factory([probe])
                scheduler = getattr(self.model, "lr_scheduler_factory", None)
                if callable(scheduler):
                    scheduler(optimizer)
            except (ValueError, TypeError) as err:
                args = (_as_dict(sub.get("model")) or {}).get("init_args") or {}
                given = {k: _as_dict(args.get(k)) for k in ("optimizer", "lr_scheduler") if args.get(k)}
                raise ConfigError(f"the optimizer settings were refused: {err} (got {given!r}). Fix "
                                  "--model.init_args.optimizer / lr_scheduler.") from None

    def _before(self, subcommand: str) -> None:
        self._check_instantiated()
        self.checkpoint = None  # checked; Lightning loads it again itself
        self._accept_run_folder(subcommand)
        runs_wandb = self._launch_rank_zero() and self.trainer.is_global_zero
        settle_early_wandb(self.wandb_mode if runs_wandb else "disabled")
        if self.wandb_mode != "disabled" and runs_wandb:
            start_wandb_service(self.trainer.loggers, self.wandb_mode == "offline")

    def before_fit(self) -> None:
        """Checks, then lock and accept the run folder (nothing was written before this); a study
        config's ``sweep:`` block is noted as ignored."""
        self._before("fit")
        stopping.clear()
        stopping.install()  # SIGTERM, SIGUSR1, SIGUSR2 stop the fit at a step (StopOnSignal)
        if self._sub().get("sweep") and self._launch_rank_zero():
            print(sweep_block_note(self._sub().get("config")), file=sys.stderr, flush=True)

    def before_validate(self) -> None:
        """As :meth:`before_fit`."""
        self._before("validate")

    def before_test(self) -> None:
        """As :meth:`before_fit`."""
        self._before("test")

    def before_predict(self) -> None:
        """As :meth:`before_fit`."""
        self._before("predict")

    # ---- trainer ---------------------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer with the run folder's loggers, checkpoints, progress output and plugins."""
        config_init = self.config_init.get(str(self.subcommand), self.config_init)
        config = {**(config_init.get("trainer") or {})}
        root = self._run_dir(config)
        self.run_folder = RunFolder(root)
        kwargs["default_root_dir"] = str(root)
        sub = self._sub()
        if config.get("logger") in (None, True):
            options = WandbOptions(**_as_dict(sub["wandb"]))
            self.wandb_mode = resolve_wandb_mode(options.mode)
            kwargs["logger"] = make_loggers(root, options, self.wandb_config(), job_type=self.subcommand)
        user = config.get("callbacks") or []
        user = list(user) if isinstance(user, list) else [user]
        has_ckpt = any(isinstance(c, ModelCheckpoint) for c in user)
        has_bar = any(isinstance(c, ProgressBar) for c in user)
        first: list[Callback] = [EpochBoundary(), StopOnSignal()]
        last: list[Callback] = [DefineWandbAxes(), MetricsCSVCheckpoint()]
        if config.get("enable_progress_bar", True) is not False and not has_bar:
            # redrawing the bar every step costs more than a small model's step; no bar in logs
            last.append(TQDMProgressBar(refresh_rate=10) if sys.stdout.isatty() else EpochLines())
        if config.get("enable_checkpointing", True) is not False and not has_ckpt:
            last.append(RunCheckpoint(self.run_folder.checkpoints))
        kwargs["callbacks"] = first + user + last
        plugins = config.get("plugins")
        plugins = [] if plugins is None else (list(plugins) if isinstance(plugins, list) else [plugins])
        if not any(isinstance(p, CheckpointIO) for p in plugins) and config.get("strategy", "auto") in (
                "auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "single_device"):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins or None
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            message = str(err).strip()
            given = {k: v for k, v in (_as_dict(sub.get("trainer")) or {}).items()
                     if isinstance(k, str) and re.search(rf"\b{re.escape(k)}\b", message)}
            given = given or {k: v for k, v in (_as_dict(sub.get("trainer")) or {}).items()
                              if k in _TRAINER_KEYS}
            raise ConfigError(f"the trainer settings were refused: {message} (got {given}). "
                              "Fix the --trainer.* option named above.") from None

    def wandb_config(self) -> dict[str, Any]:
        """The resolved config as flat dotted keys (the W&B run config). A members fit names its
        members as the model resolved them: ``model.seeds`` and ``model.widths`` (lists),
        ``model.members`` (their count), and, for several widths, ``model.width`` and
        ``model.num_params`` as per-width lists (the base width trains no member)."""
        sub = self._sub()
        flat = flatten_config(sub)
        for key in ("overwrite", "wandb.mode", "threads"):
            flat.pop(key, None)
        for key in [k for k in flat if k == "sweep" or k.startswith("sweep.")]:
            flat.pop(key)  # a study config's sweep block is no setting of this fit
        model = getattr(self, "model", None)
        for key in ("input_shape", "num_classes", "task"):
            if model is not None and key in getattr(model, "hparams", {}):
                flat[f"model.{key}"] = tuples_to_lists(model.hparams[key])
        if model is not None and hasattr(model, "num_params"):
            flat["model.num_params"] = int(model.num_params)
        if model is not None and getattr(model, "members", None) is not None:
            rows = model.member_rows()
            sizes = {int(r["width"]): int(r["num_params"]) for r in rows}
            flat["model.seeds"] = list(dict.fromkeys(int(r["seed"]) for r in rows))
            flat["model.widths"] = list(sizes)
            flat["model.members"] = len(rows)
            if len(sizes) == 1:
                flat["model.width"], flat["model.num_params"] = next(iter(sizes.items()))
            else:
                flat["model.width"], flat["model.num_params"] = list(sizes), list(sizes.values())
        return flat

    # ---- after fit -------------------------------------------------------------------------------
    def _has_test_split(self) -> bool:
        dm, model = self.datamodule, self.model
        if not isinstance(model, LightningModule) or type(model).test_step is LightningModule.test_step:
            return False
        if dm is None:
            return False
        return type(dm).test_dataloader is not LightningDataModule.test_dataloader

    def after_fit(self) -> None:
        """Test split, W&B summary and a printed summary of the run."""
        trainer = self.trainer
        if self._sub().get("test_after_fit", True) and not trainer.interrupted and self._has_test_split():
            trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        self.finish_run()

    def finish_run(self) -> None:
        """W&B summary values (final and best val/test, final train error), end of the W&B run,
        and the end-of-fit summary on the console (rank zero)."""
        trainer = self.trainer
        if not trainer.is_global_zero or self.run_folder is None:
            return
        from overparam_lit.studies.results import run_summary

        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, RunCSVLogger)), None)
        summary: dict[str, float] = {}
        if csv_logger is not None:
            csv_logger.csv.flush(sync=True)
            summary = run_summary(self.run_folder.root)
        for logger in trainer.loggers:
            run = wandb_run_if_started(logger) if isinstance(logger, WandbLogger) else None
            if run is not None:
                run.summary.update(summary)
                run.finish()
        print_run_summary(self.run_folder, summary, getattr(self, "wandb_mode", "disabled") == "offline",
                          growth=getattr(self.model, "loss_growth", None))

    # ---- cleanup ---------------------------------------------------------------------------------
    def release(self) -> None:
        """Release the lock, forget the inherited environment, and remove a reserved default
        folder that stayed empty because the launch was refused."""
        if self.lock is not None:
            self.lock.release()
        stopping.uninstall()
        for key, old in self._set_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._set_env = {}
        if not self._accepted and self.subcommand is not None:
            for path in self._reserved:
                try:
                    path.rmdir()
                except OSError:
                    break
        self._reserved = []


_TRAINER_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "max_epochs", "max_steps",
                 "plugins", "fast_dev_run")

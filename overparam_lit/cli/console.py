"""What a run prints: one line per epoch, the end-of-fit summary, the note on an ignored
``sweep:`` block, the message of a fit stopped by a signal, and the console noise dropped."""

from __future__ import annotations

import logging
import signal
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar

from overparam_lit import stopping
from overparam_lit.runfolder import RunFolder


class EpochLines(ProgressBar):
    """Progress as one plain line per epoch (for logs that are not a terminal, where a TQDM bar
    redraws into thousands of lines): ``epoch 3/40  train/loss 0.512  ...  val/acc 0.801  1.2 s``."""

    KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._pending: int | None = None
        self._start = time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _line(self, trainer: Trainer, epoch: int) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        metrics = trainer.callback_metrics
        parts = [f"{k} {float(metrics[k]):.4g}" for k in self.KEYS if k in metrics]
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        seconds = time.perf_counter() - self._start
        print(f"epoch {epoch + 1}{total}  " + "  ".join(parts) + f"  {seconds:.1f} s", flush=True)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            self._line(trainer, self._pending)
        self._pending = None
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            self._line(trainer, self._pending)
        self._pending = None

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            metrics = trainer.callback_metrics
            parts = [f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()) if k.startswith("test/")]
            print("test  " + "  ".join(parts), flush=True)


def sweep_block_note(configs: Any) -> str:
    """The note of a fit whose config holds a study's ``sweep:`` block (which only ``sweep`` reads)."""
    import yaml

    study = "STUDY.yaml"
    for cfg in configs or []:
        path = str(getattr(cfg, "relative", None) or cfg)
        try:
            text = yaml.safe_load(Path(getattr(cfg, "absolute", None) or path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(text, dict) and text.get("sweep"):
            study = path
    return (f"overparam-lit fit: note: the sweep: block of {study} was ignored; this fit runs the config's "
            f"base point only. `overparam-lit sweep -c {study} --out DIR` runs the study.")


def print_run_summary(folder: RunFolder, summary: Mapping[str, float], offline: bool,
                      growth: Mapping[str, float] | None = None) -> None:
    """Print where a finished run lies, its final metrics and how to look at them; ``growth``
    (the module's ``loss_growth``) adds a warning that the training loss grew over a million-fold."""
    keys = [("train", "final/train_acc", "final/train_loss"), ("val", "final/val_acc", "final/val_loss"),
            ("test", "final/test_acc", "final/test_loss")]
    parts = []
    for split, acc, loss in keys:
        if acc in summary:
            parts.append(f"{split}/acc {summary[acc]:.4f}")
        elif loss in summary:
            parts.append(f"{split}/loss {summary[loss]:.4g}")
    root = folder.root
    lines = [f"Run folder: {root}"]
    if parts:
        lines.append("Final: " + "  ".join(parts))
    if "best/val_acc" in summary:
        epoch = int(summary.get("best/val_epoch", -1)) + 1  # counted from 1, as the epoch lines
        lines.append(f"Best val/acc {summary['best/val_acc']:.4f} (epoch {epoch})" if epoch > 0
                     else f"Best val/acc {summary['best/val_acc']:.4f}")
    lines += width_table(folder)
    if growth:
        member = f" of member {int(growth['member'])}" if growth.get("member") else ""
        lines.append(
            f"Warning: the training loss{member} grew {growth['ratio']:.3g}-fold over its first step's "
            f"value ({growth['first']:.4g} -> {growth['loss']:.4g} in epoch {int(growth['epoch']) + 1}): "
            "training diverged without reaching NaN. Lower the learning rate, or add warm-up or "
            "gradient clipping.")
    if folder.metrics_csv.is_file():  # not with --trainer.logger false
        lines.append(f"Metrics: {folder.metrics_csv} (one row per logging step; "
                     "overparam_lit.studies.read_metrics_csv reads it)")
    runs = folder.wandb_offline_runs()
    if offline and runs:
        lines.append(f"W&B (offline): wandb sync {runs[-1]}")
    elif folder.wandb.is_dir():
        lines.append("W&B: the run is on your W&B dashboard (project overparam-lit by default)")
    if folder.last_ckpt.is_file():
        lines.append(f"Continue: overparam-lit fit -c {folder.config_yaml} --ckpt_path {folder.last_ckpt} "
                     "--trainer.max_epochs <more>")
    print("\n".join(lines), flush=True)


def width_table(folder: RunFolder) -> list[str]:
    """Lines of the end-of-fit table of a members fit: per width, its seeds and the means over
    them of the final val/test accuracy and loss, and its parameter count; then where
    ``members.csv`` is. Empty for a single model."""
    from overparam_lit.studies.results import member_finals

    if not folder.members_csv.is_file():
        return []
    rows = member_finals(folder.root)
    if not rows or any(r.get("width") in (None, "") for r in rows):  # another table of that name
        return []
    keys = [k for k in ("val/acc", "val/loss", "test/acc", "test/loss") if any(k in r for r in rows)]
    head = ["width", "seeds", "num_params", *keys]
    table = [head]
    for width in sorted({int(r["width"]) for r in rows}):
        mine = [r for r in rows if int(r["width"]) == width]
        cells = [str(width), str(len(mine)), str(mine[0].get("num_params", ""))]
        for key in keys:
            values = [float(r[key]) for r in mine if r.get(key) is not None]
            cells.append(f"{sum(values) / len(values):.4f}" if values else "")
        table.append(cells)
    sizes = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["Members by width (final values, means over the seeds):"]
    lines += ["  " + "  ".join(c.rjust(n) for c, n in zip(row, sizes, strict=True)) for row in table]
    lines.append(f"Members: {folder.members_csv} (one row per member and epoch)")
    return lines


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_console() -> None:
    """Drop console noise that says nothing about the run: Lightning's advertisement tips, the
    ``log_every_n_steps`` warning (the modules log per epoch), a deprecation warning Lightning
    raises inside torch's pytree, and its hint to prepend ``srun`` that every fit outside SLURM
    prints on a machine where SLURM is installed (a login node)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in log.filters):
        log.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore",
                            message=r"The `srun` command is available on your system but is not used")


def stop_message(stop: BaseException) -> str:
    """What a fit stopped by a signal prints: where it stopped, what it resumes from, and how."""
    signum = getattr(stop, "signum", int(signal.SIGTERM))
    epoch, step = getattr(stop, "stopped_at", (None, None))
    where = f" at step {step} (epoch {epoch})" if step is not None else ""
    head = (f"overparam-lit fit: stopped on {stopping.signal_name(signum)}{where}; exit code "
            f"{stopping.REQUEUE_EXIT_CODE} (run again to continue).")
    root = getattr(stop, "run_folder", None)
    if root is None:
        return head
    folder = RunFolder(root)
    ckpt = folder.resume_checkpoint()  # the one a sweep's rerun resumes from
    if ckpt is None:
        return (f"{head} No checkpoint was written yet (none is made before the first epoch ends), "
                f"so the fit starts over: overparam-lit fit -c {folder.config_yaml} --overwrite true")
    return (f"{head} The run folder resumes from {ckpt} (the steps after it run again): "
            f"overparam-lit fit -c {folder.config_yaml} --ckpt_path {ckpt}")

"""The run folder's ``config.yaml``: written once the fit was accepted, ready to be used again
with ``-c``."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from overparam_lit.runfolder import RunFolder


class SaveRunConfig(SaveConfigCallback):
    """Saves the whole config as ``config.yaml`` in the run folder (atomically, and only once
    the fit was accepted). A fit that resumes the folder keeps the earlier config as
    ``config.yaml.<time>.bak``. ``overwrite`` is saved as false, so rerunning the saved config
    never clears a folder by surprise. Values the CLI links from the data module into the model
    are appended as comments (they are recomputed when the file is used again with ``-c``).
    """

    def __init__(self, *args: Any, keep_old: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_old = keep_old

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # every rank calls this: it broadcasts the folder
        if trainer.is_global_zero and log_dir is not None:
            config = self.config.clone()
            if "overwrite" in config:
                config["overwrite"] = False
            if "threads" in config:
                config["threads"] = None  # a setting of this machine: a rerun chooses again
            # the config was checked when it was parsed; dumping it again unchecked is fast
            text = self.parser.dump(config, skip_none=False, skip_check=True)
            linked = {k: getattr(pl_module, k, None) for k in ("input_shape", "num_classes", "task")}
            text += "# linked from the data module at run time:\n" + "".join(
                f"#   model.init_args.{k}: {list(v) if isinstance(v, tuple) else v}\n"
                for k, v in linked.items()
            )
            folder = RunFolder(log_dir)
            if self.config_filename == RunFolder.CONFIG:
                folder.write_config(text, keep_old=self.keep_old)
            else:
                from overparam_lit.utils import atomic_write_text

                atomic_write_text(text, folder.root / self.config_filename)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


# ---- the CLI -------------------------------------------------------------------------------------

"""The run folder's ``config.yaml``: written once the fit was accepted, ready to be used again
with ``-c``, and on disk when the fit ends or stops."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import set_dumper
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_write_text, fsync_deferred, fsync_path

YAML_OPTIONS = {"default_flow_style": False, "allow_unicode": True, "sort_keys": False}
"""The options of jsonargparse's ``yaml`` dump."""

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./-]{1,100}")
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_./: -]*")


def _plain(data: Any) -> bool:
    """Whether libyaml's emitter writes ``data`` exactly as PyYAML's does: nested dicts and lists
    of numbers, booleans, ``None`` and strings of letters, digits and ``_./: -`` (keys: 1 to 100
    of them, no space or colon). Other strings (quotes and other symbols, characters beyond
    ASCII, long or empty keys) can come out quoted, escaped or folded differently."""
    if isinstance(data, str):
        return _PLAIN_TEXT.fullmatch(data) is not None
    if isinstance(data, dict):
        return all(isinstance(k, str) and _PLAIN_KEY.fullmatch(k) is not None and _plain(v)
                   for k, v in data.items())
    if isinstance(data, list):
        return all(_plain(v) for v in data)
    return data is None or type(data) in (bool, int, float)


def yaml_dump(data: Any) -> str:
    """jsonargparse's ``yaml`` dump (``yaml.safe_dump`` with its options), written by libyaml's
    emitter where that gives the same text (:func:`_plain`), in a fifth of the time of PyYAML's
    own; a config dump makes one per class in the config."""
    if yaml.__with_libyaml__ and _plain(data):
        return yaml.dump(data, Dumper=yaml.CSafeDumper, **YAML_OPTIONS)
    return yaml.safe_dump(data, **YAML_OPTIONS)


set_dumper("yaml", yaml_dump)


class SaveRunConfig(SaveConfigCallback):
    """Saves the whole config as ``config.yaml`` in the run folder (atomically, and only once
    the fit was accepted). A fit that resumes the folder keeps the earlier config as
    ``config.yaml.<time>.bak``. ``overwrite`` is saved as false, so rerunning the saved config
    never clears a folder by surprise. Values the CLI links from the data module into the model
    are appended as comments (they are recomputed when the file is used again with ``-c``). The
    file waits for the disk once, when the fit (or test) ends or stops, with the run's other files,
    not before its first step; a killed process loses nothing by it.
    """

    def __init__(self, *args: Any, keep_old: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_old = keep_old
        self._unsynced: Path | None = None  # the written config, not yet on disk

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # every rank calls this: it broadcasts the folder
        if trainer.is_global_zero and log_dir is not None:
            text = self.config_text()
            linked = {k: getattr(pl_module, k, None) for k in ("input_shape", "num_classes", "task")}
            text += "# linked from the data module at run time:\n" + "".join(
                f"#   model.init_args.{k}: {list(v) if isinstance(v, tuple) else v}\n"
                for k, v in linked.items()
            )
            folder = RunFolder(log_dir)
            with fsync_deferred():
                if self.config_filename == RunFolder.CONFIG:
                    self._unsynced = folder.write_config(text, keep_old=self.keep_old)
                else:
                    self._unsynced = atomic_write_text(text, folder.root / self.config_filename)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.sync()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.sync()  # a stopped fit resumes with it

    def sync(self) -> None:
        """Make the written config durable (the file and its folder entry)."""
        if self._unsynced is not None:
            fsync_path(self._unsynced)
            fsync_path(self._unsynced.parent)
            self._unsynced = None

    def config_text(self) -> str:
        """The config as a rerun should read it: ``overwrite`` false and ``threads`` unset (a
        setting of this machine: a rerun chooses again). A dump copies the config, so the two
        keys are set on the CLI's own config only while it is dumped, without a copy of its own."""
        saved = {k: v for k, v in (("overwrite", False), ("threads", None)) if k in self.config}
        before = {k: self.config[k] for k in saved}
        try:
            for key, value in saved.items():
                self.config[key] = value
            # the config was checked when it was parsed; dumping it again unchecked is fast
            return self.parser.dump(self.config, skip_none=False, skip_check=True)
        finally:
            for key, value in before.items():
                self.config[key] = value


# ---- the CLI -------------------------------------------------------------------------------------

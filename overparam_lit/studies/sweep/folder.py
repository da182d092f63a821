"""The folders of a sweep: what a fit needs to continue in its run folder, and the sweep folder's
lock (one ``overparam-lit sweep`` at a time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overparam_lit.runfolder import RunFolder, RunLock
from overparam_lit.utils import ConfigError


def resume_args(folder: str | Path, fresh: bool = False) -> list[str]:
    """What a fit needs to continue in ``folder``: ``--ckpt_path <newest intact checkpoint>``
    for an interrupted run, ``--overwrite true`` for a run that left no checkpoint (or with
    ``fresh``), nothing for an empty folder."""
    run = RunFolder(folder)
    ckpt = None if fresh else run.resume_checkpoint()
    if ckpt is not None:
        return ["--ckpt_path", str(ckpt)]
    return ["--overwrite", "true"] if run.holds_run() else []


class SweepLock(RunLock):
    """The run folder's lock (:class:`~overparam_lit.runfolder.RunLock`) on a sweep folder
    (``sweep.lock``): one ``overparam-lit sweep`` at a time runs or rewrites a sweep folder."""

    def _busy(self, info: dict[str, Any]) -> ConfigError:
        pid = info.get("pid", "?")
        since = f" since {info['started']}" if info.get("started") else ""
        return ConfigError(
            f"another `overparam-lit sweep` is running in this sweep folder (pid {pid} on host "
            f"{info.get('host', '?')}{since}; lock file {self.path}) (got {str(self.path.parent)!r}). "
            f"Wait for it to end, or stop it (kill {pid}: its finished fits are kept) and rerun to "
            "continue; if that process is gone (a host that crashed), delete the lock file.")

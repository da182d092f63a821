"""The run folder: one place that names every artifact of a fit and guards the folder.

A run folder (``--trainer.default_root_dir``) belongs to one fit. :class:`RunFolder` names each
file in it, reads and writes the shared ones, and answers the questions the CLI and the sweep
ask before a fit touches it (does it hold an earlier run? which checkpoint resumes it? is it
writable?). :class:`~overparam_lit.runlock.RunLock` keeps two fits out of one folder at the same
time, and :mod:`overparam_lit.torch_files` reads its checkpoints with a clear error.

Layout (names identical to what the callbacks write)::

    config.yaml              the whole resolved config (rerun it with -c)
    config.yaml.<time>.bak   the config of an earlier fit that this one resumed
    metrics.csv              one row per logging step (CSV logger)
    members.csv              per-member metrics, one row per member and epoch (member fits)
    hparams.yaml             the model's hyperparameters
    run.lock                 held while a fit runs (host, pid, start time, command)
    checkpoints/             last.ckpt and epoch=NNN.ckpt
    wandb/                   W&B's local files (offline runs upload with ``wandb sync``)
    done.json                written by overparam-lit sweep when the fit of a point exits 0

and a folder per study that ran, its files declared by the study
(:mod:`overparam_lit.registry`)::

    imp/                     level_XX/{mask.pt, rewind.pt, final.pt, sparsity.json, metrics.json,
                             pruned_net.pt}, summary.json, ticket_start.json, ticket_result.json
    hessian/                 probe_step%08d.npz, density_step%08d.png
    widen/                   widen.json (the Widen callback's record)
    regions/                 bank.pt, maps_epoch%04d.npz, epoch%04d.png, history.json,
                             overview.png, filmstrip.png, filmstrip.gif

This module is pure (no Lightning import): the study readers use it too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from overparam_lit import registry
from overparam_lit.runlock import LOCK_ENV, RunLock
from overparam_lit.torch_files import checkpoint_problem, load_torch_file, read_checkpoint
from overparam_lit.utils import ConfigError, atomic_write_json, atomic_write_text, check, read_csv_rows

__all__ = ["RunFolder", "RunLock", "read_checkpoint", "checkpoint_problem", "load_torch_file", "LOCK_ENV"]



class _StudyArtifacts(type):
    """Class-level lookup of the studies' artifact names (``hasattr(RunFolder, "imp_mask")``)."""

    def __getattr__(cls, name: str) -> str:
        path = registry.artifact(name) if not name.startswith("_") else None
        if path is None:
            raise AttributeError(f"type object 'RunFolder' has no attribute {name!r}")
        return path


class RunFolder(metaclass=_StudyArtifacts):
    """Names and reads/writes the artifacts of one run folder.

    Args:
        root: the run folder (``--trainer.default_root_dir``).

    Every path is a property or method of this class, so a script or callback never spells a
    file name itself: ``RunFolder(root).last_ckpt``, ``RunFolder(root).imp_mask(3)``,
    ``RunFolder.of(trainer).hessian_probe(step)``. The run's own files are named here; each
    study's files are named by its declaration (:class:`~overparam_lit.registry.Study`
    ``artifacts``) and appear as attributes of the same name: a path, a function of the path's
    fields (``imp_mask(level)``), or a function listing what exists (``imp_levels()``).
    """

    CONFIG = "config.yaml"
    METRICS = "metrics.csv"
    MEMBERS = "members.csv"
    HPARAMS = "hparams.yaml"
    LOCK = "run.lock"
    CHECKPOINTS = "checkpoints"
    LAST_CKPT = "last.ckpt"
    CKPT_FILENAME = "{epoch:03d}"
    """``ModelCheckpoint(filename=...)`` pattern: it writes ``epoch=NNN.ckpt``."""
    WANDB = "wandb"
    DONE = "done.json"
    CORE_ARTIFACTS = (CONFIG, METRICS, MEMBERS, HPARAMS, CHECKPOINTS, WANDB, DONE)
    """The run's own names; with every study's folder (:meth:`run_artifacts`), the names whose
    presence means the folder holds a run (cleared by ``--overwrite``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def reserve(cls, base: str | Path, tries: int = 10000) -> tuple[RunFolder, list[Path]]:
        """A fresh run folder at ``base``, else ``base-1``, ``base-2``, ...: created with ``mkdir``,
        which is atomic, so no two fits that start in the same second share one. Returns it and
        the folders this call created, the run folder first (to remove if the fit never starts)."""
        base = Path(base)
        root = base
        for n in range(1, tries):
            created = [p for p in reversed(root.parents) if not p.exists()]
            root.parent.mkdir(parents=True, exist_ok=True)
            try:
                root.mkdir()
            except FileExistsError:
                root = base.with_name(f"{base.name}-{n}")
                continue
            return cls(root), [root, *reversed(created)]
        raise ConfigError(f"no fresh run folder could be made beside {str(base)!r} after {tries} tries "
                          "(got every name taken). Give the run a folder with --trainer.default_root_dir.")

    @classmethod
    def of(cls, trainer: Any) -> RunFolder:
        """The run folder of a Lightning trainer (its ``default_root_dir``)."""
        return cls(trainer.default_root_dir)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    def __getattr__(self, name: str) -> Any:
        path = registry.artifact(name) if not name.startswith("_") else None
        if path is None:
            raise AttributeError(f"'RunFolder' object has no attribute {name!r}")
        return registry.resolve(self.root, path)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *registry.artifact_names()})

    @classmethod
    def run_artifacts(cls) -> tuple[str, ...]:
        """Names whose presence means the folder holds a run: the run's own and every registered
        study's folder (cleared by ``--overwrite``)."""
        own = (cls.CONFIG, cls.METRICS, cls.MEMBERS, cls.HPARAMS, cls.CHECKPOINTS)
        studies = (f for f in registry.study_folders() if f not in cls.CORE_ARTIFACTS)
        return (*own, *studies, cls.WANDB, cls.DONE)

    # ---- top-level files -----------------------------------------------------------------
    @property
    def config_yaml(self) -> Path:
        """``config.yaml``: the whole resolved config."""
        return self.root / self.CONFIG

    @property
    def metrics_csv(self) -> Path:
        """``metrics.csv``: one row per logging step."""
        return self.root / self.METRICS

    @property
    def members_csv(self) -> Path:
        """``members.csv``: one row per member and epoch (member fits)."""
        return self.root / self.MEMBERS

    @property
    def hparams_yaml(self) -> Path:
        """``hparams.yaml``: the model's hyperparameters."""
        return self.root / self.HPARAMS

    @property
    def lock_file(self) -> Path:
        """``run.lock``: present while a fit runs in the folder."""
        return self.root / self.LOCK

    @property
    def done_json(self) -> Path:
        """``done.json``: the sweep's completion marker of a grid point."""
        return self.root / self.DONE

    def config_backups(self) -> list[Path]:
        """``config.yaml.<time>.bak`` files of earlier fits this folder resumed, oldest first."""
        return sorted(self.root.glob(f"{self.CONFIG}.*.bak"))

    # ---- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``."""
        return self.root / self.CHECKPOINTS

    @property
    def last_ckpt(self) -> Path:
        """``checkpoints/last.ckpt``: the checkpoint a resume starts from."""
        return self.checkpoints / self.LAST_CKPT

    def epoch_ckpt(self, epoch: int) -> Path:
        """``checkpoints/epoch=NNN.ckpt``: the state after training epoch ``epoch`` (0-based)."""
        return self.checkpoints / f"epoch={epoch:03d}.ckpt"

    def checkpoint_files(self) -> list[Path]:
        """Every ``*.ckpt`` in ``checkpoints/``, newest first (by modification time)."""
        if not self.checkpoints.is_dir():
            return []
        files = [p for p in self.checkpoints.glob("*.ckpt") if p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name == self.LAST_CKPT), reverse=True)

    def newest_intact_checkpoint(self, exclude: str | Path | None = None) -> Path | None:
        """The newest checkpoint that loads (``None`` if there is none)."""
        skip = Path(exclude).resolve() if exclude is not None else None
        for path in self.checkpoint_files():
            if skip is not None and path.resolve() == skip:
                continue
            if checkpoint_problem(path) is None:
                return path
        return None

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint that resumes this run: ``last.ckpt`` when it loads, else the newest
        intact one (``None`` when the run has none)."""
        if self.last_ckpt.is_file() and checkpoint_problem(self.last_ckpt) is None:
            return self.last_ckpt
        return self.newest_intact_checkpoint()

    def owns(self, path: str | Path) -> bool:
        """True when ``path`` lies inside this folder's ``checkpoints/``."""
        try:
            Path(path).resolve().relative_to(self.checkpoints.resolve())
        except ValueError:
            return False
        return True

    @property
    def wandb(self) -> Path:
        """``wandb/``: W&B's local run files."""
        return self.root / self.WANDB

    def wandb_offline_runs(self) -> list[Path]:
        """``wandb/offline-run-*`` folders, oldest first."""
        if not self.wandb.is_dir():
            return []
        return sorted(p for p in self.wandb.glob("offline-run-*") if p.is_dir())

    def wandb_run_files(self) -> list[Path]:
        """The ``.wandb`` files of every local W&B run (online or offline), oldest first."""
        if not self.wandb.is_dir():
            return []
        return sorted(self.wandb.glob("*run-*/run-*.wandb"))

    # ---- reading and writing the shared files ----------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """``config.yaml`` as a dictionary (empty when missing or unreadable)."""
        import yaml

        try:
            return yaml.safe_load(self.config_yaml.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def write_config(self, text: str, keep_old: bool = False) -> Path:
        """Write ``config.yaml`` atomically; ``keep_old`` first keeps an existing one as
        ``config.yaml.<time>.bak`` (a resumed fit keeps the config it resumed)."""
        if keep_old and self.config_yaml.is_file():
            stamp = int(self.config_yaml.stat().st_mtime)
            backup = self.root / f"{self.CONFIG}.{stamp}.bak"
            n = 1
            while backup.exists():
                backup = self.root / f"{self.CONFIG}.{stamp}-{n}.bak"
                n += 1
            os.replace(self.config_yaml, backup)
        return atomic_write_text(text, self.config_yaml)

    def read_metrics(self) -> list[dict[str, str]]:
        """Rows of ``metrics.csv`` as dictionaries of strings (empty when missing)."""
        return read_csv_rows(self.metrics_csv, missing_ok=True)

    def read_members(self) -> list[dict[str, str]]:
        """Rows of ``members.csv`` as dictionaries of strings (empty when missing)."""
        return read_csv_rows(self.members_csv, missing_ok=True)

    def read_json(self, path: str | Path) -> Any:
        """A JSON artifact of this folder: a path of this class (``self.done_json``), absolute, or
        relative to the folder."""
        path = Path(path)
        if not path.is_absolute() and not path.exists() and not str(path).startswith(str(self.root)):
            path = self.root / path
        return json.loads(path.read_text())

    def read_done(self) -> dict[str, Any] | None:
        """``done.json`` (``None`` when the point has not finished)."""
        return self.read_json(self.done_json) if self.done_json.is_file() else None

    def write_done(self, record: dict[str, Any]) -> Path:
        """Write ``done.json`` atomically."""
        return atomic_write_json(record, self.done_json)

    # ---- guarding the folder ---------------------------------------------------------------
    def existing_artifacts(self) -> list[Path]:
        """The run artifacts present in the folder (what shows it holds a run)."""
        if not self.root.is_dir():
            return []
        found = [self.root / name for name in self.run_artifacts() if (self.root / name).exists()]
        return found + self.config_backups()

    def holds_run(self) -> bool:
        """True when the folder holds an earlier run (any run artifact)."""
        return bool(self.existing_artifacts())

    def clear(self) -> list[Path]:
        """Delete the artifacts of an earlier run (``--overwrite``): every name of
        :meth:`run_artifacts`, config backups and stale temporary files. Files that are no run
        artifact (a sweep's logs, the user's notes) stay. Returns what was removed."""
        removed = self.existing_artifacts()
        removed += [p for p in self.root.glob(".*.tmp")] if self.root.is_dir() else []
        for path in removed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return removed

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete ``.<name>.*.tmp`` files that a killed fit left half written (call it only
        while holding the folder's lock). Returns what was removed."""
        if not self.root.is_dir():
            return []
        stale = [p for d in (self.root, self.checkpoints) if d.is_dir() for p in d.glob(".*.tmp")]
        # a study's folder and its subfolders (IMP levels), in one walk each
        stale += [p for f in registry.study_folders() for p in (self.root / f).rglob(".*.tmp")]
        stale = [p for p in stale if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def check_writable(self) -> None:
        """Raise :class:`ConfigError` unless the folder can be created and written.

        Nothing is left behind: a probe file is created in the folder (or in its nearest
        existing parent) and removed at once.
        """
        root = self.root
        fix = "Choose another --trainer.default_root_dir (or leave it unset for a fresh runs/<time>)."
        check(not root.exists() or root.is_dir(), "the run folder is a file, not a folder", str(root), fix)
        probe_dir = root
        while not probe_dir.exists():
            parent = probe_dir.parent
            if parent == probe_dir:
                break
            probe_dir = parent
        check(probe_dir.is_dir(), "a parent of the run folder is a file, not a folder", str(probe_dir), fix)
        try:
            fd, tmp = tempfile.mkstemp(dir=probe_dir, prefix=".overparam-lit-probe-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            what = "the run folder is not writable" if probe_dir == root else (
                f"the run folder cannot be created: its parent {probe_dir} is not writable")
            raise ConfigError(f"{what} (got {str(root)!r}: {err.strerror or err}). {fix}") from None

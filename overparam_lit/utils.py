"""Small helpers shared by the CLI, modules and callbacks: run folders, atomic writes, logging."""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import json
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch


class ConfigError(ValueError):
    """Bad user input, found before training starts.

    The message says what was wrong, the value given, and how to fix it; the CLI prints it
    as one paragraph without a traceback.
    """


def check(condition: bool, what: str, value: Any, fix: str) -> None:
    """Raise :class:`ConfigError` with a uniform message unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{what} (got {value!r}). {fix}")


def check_out_file(path: str | Path, fix: str) -> Path:
    """Refuse, before anything is written, an ``--out`` file that cannot be written: a folder, a
    file in a missing or read-only folder, or a read-only file. Returns ``path``."""
    path = Path(path)
    check(not path.is_dir(), "--out is a folder, not a file", str(path), fix)
    parent = path.parent if str(path.parent) else Path(".")
    check(parent.is_dir(), "the folder of --out does not exist", str(path), fix)
    check(os.access(parent, os.W_OK | os.X_OK), "the folder of --out is not writable", str(path), fix)
    check(not path.exists() or os.access(path, os.W_OK), "--out exists and is not writable", str(path), fix)
    return path


class OneLineParser(argparse.ArgumentParser):
    """An ``argparse`` parser of a subcommand whose usage mistakes raise :class:`ConfigError` in
    one line, message first, with ``example`` (``--help`` still shows the whole usage)."""

    def __init__(self, *args: Any, example: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.example = example

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}. Example: {self.example} (every option: {self.prog} --help).")


def fsync_path(path: str | Path) -> None:
    """Flush a file (or a folder's entries) to disk; a no-op where the platform refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_DURABLE = [True]


def durable() -> bool:
    """Whether writes now wait for the disk (``fsync``); see :func:`fsync_deferred`."""
    return _DURABLE[-1]


@contextlib.contextmanager
def fsync_deferred() -> Iterator[None]:
    """Writes inside skip ``fsync``. A killed process (even ``kill -9``) loses nothing by it: every
    write that returned is in the kernel's page cache and atomic renames keep their order; only a
    crash of the machine itself could lose what was not yet on disk. Tiny fits checkpoint every
    epoch, where the flushes cost more than the epoch."""
    _DURABLE.append(False)
    try:
        yield
    finally:
        _DURABLE.pop()


def atomic_write(path: str | Path, write: Any, sync: bool | None = None) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file in the same folder, which
    is flushed to disk (``sync``, default :func:`durable`) and renamed over ``path``. A kill at any
    moment leaves either the old file or the new one, never a half file, and no orphan outside
    the folder."""
    sync = durable() if sync is None else sync
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts should read like any file
    try:
        write(tmp)
        if sync:
            fsync_path(tmp)
        os.replace(tmp, path)
        if sync:
            fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def local_file(path: str | Path) -> Path | None:
    """The local path that ``path`` or a ``file://`` URL names; ``None`` for another URL
    (``s3://``, ``memory://``), which Lightning's fsspec writers handle."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        return None
    return Path(text.removeprefix("file://"))


def atomic_copy(source: str | Path, path: str | Path) -> Path:
    """Copy the bytes of ``source`` to ``path`` atomically (see :func:`atomic_write`): a file of
    its own, which outlives any later change to ``source``."""
    return atomic_write(Path(path), lambda tmp: shutil.copyfile(source, tmp))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file and a rename (never a half file)."""
    return atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_save_npz(path: str | Path, **arrays: Any) -> Path:
    """``numpy.savez_compressed`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    return atomic_write(Path(path), write)


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")

    return atomic_write(Path(path), write)


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (format from the suffix of ``path``)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def log_scalars(trainer: Any, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log scalar metrics to every logger of ``trainer`` (W&B and CSV alike), rank zero only.

    Use this from callbacks for level-wise or probe-wise series; include the series' own x
    axis in ``metrics`` (for example ``imp/level``), which W&B plots against through
    ``define_metric`` (set up by the CLI).
    """
    if trainer.global_rank != 0:
        return
    clean = {k: float(v.item() if torch.is_tensor(v) else v) for k, v in metrics.items()}
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        logger.log_metrics(clean, step=step)


def log_image(trainer: Any, key: str, path: str | Path, caption: str | None = None) -> None:
    """Log a saved picture to W&B if a W&B logger is attached (rank zero only)."""
    if trainer.global_rank != 0:
        return
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log(
                {key: wandb.Image(str(path), caption=caption), "trainer/global_step": trainer.global_step}
            )


class _LazyPackage(types.ModuleType):
    """A package whose exported names load with their submodule on first use (see
    :func:`lazy_exports`). A submodule that shares its name with an exported function
    (``curvature.lanczos``) does not replace the function as the package's attribute, as with
    the eager ``from .lanczos import lanczos`` it replaces."""

    def __setattr__(self, name: str, value: Any) -> None:
        owner = self.__dict__.get("_lazy_owner", {})
        if (name in owner and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            return
        super().__setattr__(name, value)


def lazy_exports(package: str, where: Mapping[str, Sequence[str]]) -> None:
    """Make ``package`` (a package's ``__name__``) load each name of ``where`` (submodule ->
    the names it exports) from its submodule on first access (PEP 562): importing the package
    stays cheap and a submodule's heavy imports (scipy, matplotlib, torch-pruning) load only
    where something uses it. ``from package import name`` works as before."""
    module = sys.modules[package]
    owner = {name: sub for sub, names in where.items() for name in names}

    def __getattr__(name: str) -> Any:
        sub = owner.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        module.__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(owner))

    module.__dict__.update(_lazy_owner=owner, __getattr__=__getattr__, __dir__=__dir__)
    module.__class__ = _LazyPackage


def read_csv_rows(path: str | Path, what: str | None = None, fix: str = "",
                  columns: Iterable[str] = (), missing_ok: bool = False) -> list[dict[str, str]]:
    """Rows of a CSV file as dictionaries of strings (the one CSV reader of the package).

    ``missing_ok``: a missing file has no rows. With ``what`` (the file's name for a message, e.g.
    ``"results.csv"``) a file that is not UTF-8 text, not a CSV table or unreadable, or that lacks
    one of ``columns``, raises a :class:`ConfigError` that names it and ends with ``fix``; without
    it such a file raises as Python does."""
    if missing_ok and not Path(path).is_file():
        return []
    if what is None:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    got = f"(got {str(path)!r})"
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} is not text (byte {err.start} is not UTF-8) {got}. {fix}") from None
    except OSError as err:
        raise ConfigError(f"{what} cannot be read: {err.strerror or err} {got}. {fix}") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        header = reader.fieldnames or []
    except csv.Error as err:
        raise ConfigError(f"{what} is not a CSV table: {err} {got}. {fix}") from None
    missing = [c for c in columns if c not in header]
    check(not missing, f"{what} lacks the column(s) {missing}", str(path), fix)
    return rows


def tuples_to_lists(value: Any) -> Any:
    """``value`` with every tuple, also inside lists and dicts, made a list: how a config value
    compares equal after a YAML or checkpoint round trip (YAML has no tuples)."""
    if isinstance(value, (tuple, list)):
        return [tuples_to_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: tuples_to_lists(v) for k, v in value.items()}
    return value

"""Tiny, fast building blocks for tests, examples and the two-process DDP test scripts (no pytest).

:class:`Blobs` is a small in-memory classification set, :func:`small_mlp` a small MLP for it and
:func:`tiny_trainer` a quiet CPU trainer. ``tests/conftest.py`` turns them into fixtures; the
scripts under ``tests/ddp/`` import them from here, so nothing needs ``sys.path`` changes.
:func:`install_kill_hook` (with :data:`KILLED_CLI`) kills a CLI process at a chosen moment of an
atomic write, and :func:`read_wandb_run` reads a local W&B run file without a server.
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from overparam_lit.data.base import ArrayDataModule
from overparam_lit.models import MLP
from overparam_lit.utils import check


class Blobs(ArrayDataModule):
    """Gaussian blobs (unit variance) around ``num_classes`` centres drawn from ``N(0, 4 I)``.

    Args:
        input_shape: shape of one input (the blobs live in ``prod(input_shape)`` dimensions).
        num_classes: classes (one blob each).
        n_train: training samples.
        n_test: test samples.
        seed: seed of the centres, labels and samples.
        balanced: labels cycle through the classes (sample ``i`` has class ``i % num_classes``)
            and each split is drawn on its own; otherwise labels are drawn at random and both
            splits come from one draw.
        **kwargs: the :class:`~overparam_lit.data.base.ArrayDataModule` arguments (batch size,
            label noise, ...).
    """

    task = "classification"

    def __init__(self, input_shape: Sequence[int] = (8,), num_classes: int = 4, n_train: int = 200,
                 n_test: int = 100, seed: int = 0, balanced: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check(num_classes >= 2 and n_train >= 1 and n_test >= 1, "Blobs needs two classes and samples",
              (num_classes, n_train, n_test), "Use num_classes >= 2 and n_train, n_test >= 1.")
        self.input_shape, self.num_classes = tuple(int(d) for d in input_shape), int(num_classes)
        self.n_train, self.n_test, self.seed, self.balanced = int(n_train), int(n_test), int(seed), balanced

    def load(self) -> dict[str, Tensor]:
        """The blobs: ``x_train``, ``y_train``, ``x_test``, ``y_test``."""
        g = torch.Generator().manual_seed(self.seed)
        d = math.prod(self.input_shape)
        centers = 2.0 * torch.randn(self.num_classes, d, generator=g)

        def draw(y: Tensor) -> tuple[Tensor, Tensor]:
            x = centers[y] + torch.randn(y.shape[0], d, generator=g)
            return x.reshape(y.shape[0], *self.input_shape), y

        n, c = self.n_train, self.num_classes
        if self.balanced:
            (xtr, ytr), (xte, yte) = (draw(torch.arange(m) % c) for m in (n, self.n_test))
        else:
            x, y = draw(torch.randint(0, c, (n + self.n_test,), generator=g))
            (xtr, ytr), (xte, yte) = (x[:n], y[:n]), (x[n:], y[n:])
        return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}


THREE_BLOBS: dict[str, Any] = {"input_shape": (1, 8), "num_classes": 3, "n_train": 120, "n_test": 60,
                               "balanced": True}
"""Three balanced blobs in ``(1, 8)``, 120 train / 60 test: ``Blobs(**THREE_BLOBS, batch_size=40)``."""


def small_mlp(optimizer: Callable[..., torch.optim.Optimizer] | None = None,
              lr_scheduler: Callable[..., Any] | None = None, width: int = 16, depth: int = 2,
              input_shape: Sequence[int] = (8,), num_classes: int = 4) -> MLP:
    """An :class:`~overparam_lit.models.MLP` for the default :class:`Blobs` (the module's own
    optimizer and scheduler unless given)."""
    kwargs: dict[str, Any] = {}
    if optimizer is not None:
        kwargs["optimizer"] = optimizer
    if lr_scheduler is not None:
        kwargs["lr_scheduler"] = lr_scheduler
    return MLP(width=width, depth=depth, input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)


TINY_STUDY_BASE: dict[str, Any] = {
    "seed_everything": 0,
    "model": {"class_path": "overparam_lit.models.MLP", "init_args": {"width": 8, "depth": 1}},
    "data": {"class_path": "overparam_lit.data.MNIST1D", "init_args": {"train_subset": 200, "val_size": 0}},
    "trainer": {"max_epochs": 2, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                "enable_model_summary": False},
    "wandb": {"mode": "disabled"},
}
"""The fit config of tiny studies in tests: an MLP 1 x 8 on 200 MNIST-1D samples, 2 epochs, W&B off
(add a ``sweep:`` block)."""


QUIET = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
         "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}
"""The :func:`tiny_trainer` defaults: one CPU process, no logger, checkpoints, bars or sanity checks."""


def tiny_trainer(root: str | Path, callbacks: Sequence[L.Callback] = (), **overrides: Any) -> L.Trainer:
    """A quiet CPU trainer writing to ``root`` (:data:`QUIET`, any of them overridden, plus any
    other ``Trainer`` argument, e.g. ``max_epochs=2`` or ``devices=2, strategy="ddp"``)."""
    return L.Trainer(default_root_dir=str(root), callbacks=list(callbacks), **{**QUIET, **overrides})


# ---- killing a process at a chosen moment of an atomic write -------------------------------------
KILL_STAGES = ("mid", "after")


def install_kill_hook(spec: str) -> None:
    """Make this process SIGKILL itself at one moment of :func:`~overparam_lit.utils.atomic_write`.

    ``spec`` is ``mid:<file name>[#n]``: while the n-th (default first) atomic write of that file
    is half done (temporary file written, not yet renamed), or ``after:<file name>[#n]``: right
    after its rename landed. Kill tests need it because the gaps between two checkpoint files are
    microseconds wide and polling the file system from outside cannot hit them.

    The hook wraps ``os.replace`` and acts only on the rename that ends an atomic write of that
    file (from its temporary file ``.<name>.*.tmp``), so the write itself runs unchanged.
    """
    stage, _, target = spec.partition(":")
    name, _, nth = target.partition("#")
    check(stage in KILL_STAGES and bool(name) and (not nth or nth.isdigit() and int(nth) >= 1),
          "a kill spec is <stage>:<file name>[#n] with stage mid or after and n >= 1", spec,
          "Use for example 'after:last.ckpt#2' or 'mid:metrics.csv'.")
    nth_write, seen = int(nth or 1), [0]
    replace = os.replace

    def reached(at: str) -> None:
        if at == stage:
            seen[0] += 1
            if seen[0] == nth_write:
                os.kill(os.getpid(), signal.SIGKILL)

    def replace_or_kill(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        ours = (isinstance(src, (str, os.PathLike)) and isinstance(dst, (str, os.PathLike))
                and Path(dst).name == name and Path(src).name.startswith(f".{name}.")
                and Path(src).name.endswith(".tmp"))
        if ours:
            reached("mid")
        replace(src, dst, *args, **kwargs)
        if ours:
            reached("after")

    os.replace = replace_or_kill


KILLED_CLI = ("import sys; from overparam_lit.testing import install_kill_hook; "
              "install_kill_hook(sys.argv.pop(1)); from overparam_lit.cli import main; main()")
"""``python -c KILLED_CLI SPEC ARGS...`` runs ``overparam-lit ARGS...`` in a process that kills
itself at ``SPEC`` (see :func:`install_kill_hook`)."""


# ---- reading an offline W&B run ------------------------------------------------------------------
def read_wandb_run(path: str | Path) -> dict[str, Any]:
    """Read a local W&B run file (``run-<id>.wandb``, e.g. of an offline run) without a server.

    The file is a LevelDB-style log of ``wandb_internal_pb2.Record`` messages (32 KiB blocks,
    7-byte chunk headers) after a 7-byte W&B header. Returns ``{"run": {...}, "config": {key:
    value}, "summary": {key: value}, "history": [row, ...], "metrics": [{"name", "glob_name",
    "step_metric"}, ...]}`` with JSON values decoded; later config and summary updates win.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no ':W&B' header)")
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 0 and length == 0:
            break
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            chunks = chunk
        elif kind == 3:
            chunks += chunk
        elif kind == 4:
            records.append(chunks + chunk)
            chunks = b""

    def key_of(item: Any) -> str:
        return item.key if item.key else "/".join(item.nested_key)

    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": [], "metrics": []}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "project": r.project, "name": r.display_name,
                          "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags)}
            for item in rec.run.config.update:
                out["config"][key_of(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][key_of(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][key_of(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({key_of(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "metric":
            out["metrics"].append({"name": rec.metric.name, "glob_name": rec.metric.glob_name,
                                   "step_metric": rec.metric.step_metric})
    for wrapped in ("config",):  # wandb.init(config=...) values arrive as {"value": v}
        for k, v in list(out[wrapped].items()):
            if isinstance(v, dict) and set(v) == {"value"}:
                out[wrapped][k] = v["value"]
    return out

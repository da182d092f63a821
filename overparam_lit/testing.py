"""Tiny, fast building blocks for tests, examples and the two-process DDP test scripts (no pytest).

:class:`Blobs` is a small in-memory classification set, :func:`small_mlp` a small MLP for it and
:func:`tiny_trainer` a quiet CPU trainer. ``tests/conftest.py`` turns them into fixtures; the
scripts under ``tests/ddp/`` import them from here, so nothing needs ``sys.path`` changes.
"""

from __future__ import annotations

import math
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

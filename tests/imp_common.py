"""Small, fast fixtures shared by the IMP tests and their DDP script."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from overparam_lit.data.base import ArrayDataModule
from overparam_lit.models import MLP


class Blobs(ArrayDataModule):
    """Four Gaussian blobs in 8-D: a tiny classification set built in memory."""

    input_shape = (8,)
    num_classes = 4
    task = "classification"

    def __init__(self, n: int = 200, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n, self.seed = n, seed

    def load(self) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        centers = torch.randn(4, 8, generator=g) * 2
        y = torch.randint(0, 4, (self.n + 100,), generator=g)
        x = centers[y] + torch.randn(self.n + 100, 8, generator=g)
        return {"x_train": x[: self.n], "y_train": y[: self.n], "x_test": x[self.n :], "y_test": y[self.n :]}


def small_mlp(optimizer=None, lr_scheduler=None, width: int = 16, depth: int = 2) -> MLP:
    kwargs = {}
    if optimizer is not None:
        kwargs["optimizer"] = optimizer
    if lr_scheduler is not None:
        kwargs["lr_scheduler"] = lr_scheduler
    return MLP(width=width, depth=depth, input_shape=(8,), num_classes=4, **kwargs)


def trainer(root: Path, callbacks: list, max_epochs: int = 2, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=str(root), max_epochs=max_epochs, accelerator="cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
        callbacks=callbacks, **kwargs,
    )

"""A tiny three-class data set for the DecisionRegions tests (also used by the DDP script)."""

from __future__ import annotations

import torch

from overparam_lit.data.base import ArrayDataModule


class Blobs(ArrayDataModule):
    """Three Gaussian blobs in ``input_shape`` (default ``(1, 8)``), 120 train / 60 test."""

    num_classes = 3

    def __init__(self, input_shape: tuple[int, ...] = (1, 8), **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_shape = tuple(input_shape)

    def load(self) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        d = int(torch.tensor(self.input_shape).prod())
        centers = 2.0 * torch.randn(3, d, generator=g)

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.arange(n) % 3
            x = centers[y] + torch.randn(n, d, generator=g)
            return x.reshape(n, *self.input_shape), y

        xtr, ytr = draw(120)
        xte, yte = draw(60)
        return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}

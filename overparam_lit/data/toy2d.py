"""Toy2D: two-dimensional classification sets, for pictures of decision regions in input space."""

from __future__ import annotations

import math

import numpy as np
import torch

from overparam_lit.data.base import LOADED, ArrayDataModule
from overparam_lit.data.cache import cached_tensors
from overparam_lit.utils import check

TOY_DATASETS = ("spirals", "moons", "circles", "xor", "gaussians")


def make_toy2d(
    name: str, n: int, num_classes: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points ``(n, 2)`` and labels of the named 2-D data set, from a private generator."""
    y = np.arange(n) % num_classes
    if name == "spirals":
        t = np.sqrt(rng.uniform(0, 1, n)) * 2.5 * math.pi
        phase = 2 * math.pi * y / num_classes
        r = t / (2.5 * math.pi)
        x = np.stack([r * np.cos(t + phase), r * np.sin(t + phase)], 1)
    elif name == "moons":
        t = rng.uniform(0, math.pi, n)
        x = np.stack([np.cos(t), np.sin(t)], 1)
        x[y == 1] = np.stack([1 - np.cos(t[y == 1]), 0.5 - np.sin(t[y == 1])], 1)
    elif name == "circles":
        t = rng.uniform(0, 2 * math.pi, n)
        r = (y + 1) / num_classes
        x = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif name == "xor":
        x = rng.uniform(-1, 1, (n, 2))
        y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
    else:  # gaussians on a circle
        angle = 2 * math.pi * y / num_classes
        centres = np.stack([np.cos(angle), np.sin(angle)], 1)
        x = centres + 0.3 * rng.standard_normal((n, 2))
    x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), y.astype(np.int64)


class Toy2D(ArrayDataModule):
    """Two-dimensional toy data: ``spirals``, ``moons``, ``circles``, ``xor``, ``gaussians``.

    Inputs have shape ``(2,)``, so the input plane itself is the decision-region picture.

    Args:
        dataset: which data set.
        num_classes: classes (spiral arms, rings, blobs); moons and xor always have 2.
        n_train: training points. n_test: test points.
        noise: standard deviation of Gaussian jitter added to the points.
        data_seed: seed of the private generator that draws the points.
        cache_dir: folder of the on-disk data cache (keyed by every argument above). ``None``
            uses ``$OVERPARAM_LIT_CACHE`` or the user cache folder
            (``$XDG_CACHE_HOME/overparam-lit``, ``~/.cache/overparam-lit``); a path uses that
            folder; ``"none"`` turns caching off.
    """

    input_shape = (2,)
    task = "classification"

    def __init__(
        self,
        dataset: str = "spirals",
        num_classes: int = 3,
        n_train: int = 1500,
        n_test: int = 1500,
        noise: float = 0.05,
        data_seed: int = 0,
        cache_dir: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        check(
            dataset in TOY_DATASETS, "unknown Toy2D data set", dataset,
            f"Set --data.dataset to one of {', '.join(TOY_DATASETS)}.",
        )
        if dataset in ("moons", "xor"):
            num_classes = 2
        check(num_classes >= 2, "num_classes must be >= 2", num_classes, "Set --data.num_classes.")
        check(n_train >= num_classes and n_test >= 1, "n_train and n_test are too small",
              (n_train, n_test), "Use at least one point per class.")
        check(noise >= 0, "noise must be >= 0", noise, "Set --data.noise, e.g. 0.05.")
        self.dataset, self.num_classes = dataset, int(num_classes)
        self.n_train, self.n_test, self.noise, self.data_seed = n_train, n_test, noise, data_seed
        self.cache_dir = cache_dir

    def load(self) -> dict[str, torch.Tensor]:
        args = {"dataset": self.dataset, "num_classes": self.num_classes, "n_train": self.n_train,
                "n_test": self.n_test, "noise": self.noise, "data_seed": self.data_seed}
        return cached_tensors("toy2d", args, self._generate, keys=LOADED,
                              cache_dir=self.cache_dir)

    def _generate(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(self.data_seed)
        x, y = make_toy2d(self.dataset, self.n_train + self.n_test, self.num_classes, self.noise, rng)
        perm = rng.permutation(len(y))
        x, y = torch.from_numpy(x[perm]), torch.from_numpy(y[perm])
        n = self.n_train
        return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}

"""MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package: no download."""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

from overparam_lit.data.base import LOADED, ArrayDataModule
from overparam_lit.data.cache import cached_tensors
from overparam_lit.utils import check


@functools.lru_cache(maxsize=4)
def generate_mnist1d(num_samples: int = 5000, train_split: float = 0.8, seed: int = 42) -> dict:
    """Generate MNIST-1D with the package's own recipe, restoring numpy's and Python's global
    random state afterwards (the package reseeds both). Cached per process; callers copy."""
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
        return make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def keep_classes(data: dict[str, torch.Tensor], classes: list[int]) -> dict[str, torch.Tensor]:
    """The samples of ``data`` (``x_train``, ``y_train``, ``x_test``, ``y_test``) whose label is in
    ``classes``, in their original order, with label ``classes[i]`` renamed ``i``."""
    relabel = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    out = {}
    for split in ("train", "test"):
        y = data[f"y_{split}"]
        keep = torch.isin(y, torch.tensor(classes))
        out[f"x_{split}"], out[f"y_{split}"] = data[f"x_{split}"][keep], relabel[y[keep]]
    return out


class MNIST1D(ArrayDataModule):
    """MNIST-1D: 10 classes of length-40 signals, inputs of shape ``(1, 40)``.

    The default (5000 samples, 80% train, seed 42) is the package's standard split:
    4000 train and 1000 test samples. Other arguments are those of ``ArrayDataModule``.
    The generated tensors are cached on disk (see :mod:`overparam_lit.data.cache`), keyed by
    the arguments below and the ``mnist1d`` version; ``mnist1d`` is imported only on a miss.

    Args:
        num_samples: total samples generated (train + test).
        train_split: fraction of them used for training.
        generation_seed: seed of the generator (42 is the published data set).
        classes: keep only these digit classes (train and test alike), relabelled ``0..C-1`` in
            the order given, so ``[3, 7, 8]`` is a 3-class problem whose label 0 is digit 3;
            ``num_classes`` becomes ``C``. ``None`` keeps all 10.
        cache_dir: folder of the on-disk data cache. ``None`` uses ``$OVERPARAM_LIT_CACHE`` or
            the user cache folder (``$XDG_CACHE_HOME/overparam-lit``, ``~/.cache/overparam-lit``);
            a path uses that folder; ``"none"`` turns caching off.
    """

    input_shape = (1, 40)
    num_classes = 10
    task = "classification"

    def __init__(
        self,
        num_samples: int = 5000,
        train_split: float = 0.8,
        generation_seed: int = 42,
        classes: list[int] | None = None,
        cache_dir: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if classes is not None:
            classes = [int(c) for c in classes]
            distinct = len(set(classes)) == len(classes)
            check(len(classes) >= 2 and distinct and all(0 <= c <= 9 for c in classes),
                  "classes must be at least two distinct digits 0-9", classes,
                  "Set --data.classes to e.g. [0, 1, 2, 3], or leave it unset for all 10 classes.")
            self.num_classes = len(classes)
        self.classes = classes
        check(num_samples >= 20, "num_samples must be >= 20", num_samples, "Set --data.num_samples.")
        check(
            0 < train_split < 1, "train_split must lie in (0, 1)", train_split,
            "Set --data.train_split, e.g. 0.8.",
        )
        self.num_samples, self.train_split, self.generation_seed = num_samples, train_split, generation_seed
        self.cache_dir = cache_dir

    def load(self) -> dict[str, torch.Tensor]:
        args = {"num_samples": self.num_samples, "train_split": self.train_split,
                "seed": self.generation_seed}
        data = cached_tensors("mnist1d", args, self._generate, packages=("mnist1d",), keys=LOADED,
                              cache_dir=self.cache_dir)
        return data if self.classes is None else keep_classes(data, self.classes)

    def _generate(self) -> dict[str, torch.Tensor]:
        d = generate_mnist1d(self.num_samples, self.train_split, self.generation_seed)
        return {
            "x_train": torch.tensor(d["x"], dtype=torch.float32).unsqueeze(1),
            "y_train": torch.tensor(d["y"], dtype=torch.long),
            "x_test": torch.tensor(d["x_test"], dtype=torch.float32).unsqueeze(1),
            "y_test": torch.tensor(d["y_test"], dtype=torch.long),
        }

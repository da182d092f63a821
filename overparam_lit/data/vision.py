"""MNIST, FashionMNIST, CIFAR10 and CIFAR100 read by torchvision from a local ``root`` folder."""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np
import torch

from overparam_lit.data.augment import random_crop_flip
from overparam_lit.data.base import ArrayDataModule, Augment
from overparam_lit.utils import ConfigError

# torchvision class name, folder torchvision reads under root, shape, classes, mean, std
_SETS = {
    "MNIST": ("MNIST", "MNIST/raw", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "FashionMNIST": ("FashionMNIST", "FashionMNIST/raw", (1, 28, 28), 10, (0.2860,), (0.3530,)),
    "CIFAR10": ("CIFAR10", "cifar-10-batches-py", (3, 32, 32), 10,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "CIFAR100": ("CIFAR100", "cifar-100-python", (3, 32, 32), 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _files_present(dataset: object) -> bool:
    folder = Path(dataset.root) / dataset.base_folder  # type: ignore[attr-defined]
    names = [f for f, _ in dataset.train_list + dataset.test_list]  # type: ignore[attr-defined]
    return all((folder / name).is_file() for name in names)


def _load_meta_unchecked(dataset: object) -> None:
    meta = dataset.meta  # type: ignore[attr-defined]
    with open(Path(dataset.root) / dataset.base_folder / meta["filename"], "rb") as fh:  # type: ignore[attr-defined]
        classes = pickle.load(fh, encoding="latin1")[meta["key"]]
    dataset.classes = classes  # type: ignore[attr-defined]
    dataset.class_to_idx = {c: i for i, c in enumerate(classes)}  # type: ignore[attr-defined]


class VisionDataModule(ArrayDataModule):
    """A torchvision image set held as a normalised float tensor on the training device.

    Args:
        root: folder holding the data set in torchvision's layout.
        download: fetch the files into ``root`` when they are missing (needs network).
        augment: random crop (padding 4) and horizontal flip on training batches.
        **kwargs: batch sizes, label noise, ``train_subset``, ``val_size`` (``ArrayDataModule``).
    """

    name = "MNIST"
    default_augment = False

    def __init__(self, root: str = "data", download: bool = False, augment: bool | None = None,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        tv_name, folder, shape, classes, self.mean, self.std = _SETS[self.name]
        self.tv_name, self.folder = tv_name, folder
        self.input_shape, self.num_classes = shape, classes
        self.root, self.download = root, download
        self.augment = self.default_augment if augment is None else augment
        if not download and not (Path(root) / folder).is_dir():
            raise self._missing(f"the folder {Path(root) / folder} does not exist")

    def _missing(self, detail: str) -> ConfigError:
        return ConfigError(
            f"{self.name} files were not found under root={self.root!r} ({detail}). Either put the "
            f"data set there in torchvision's layout ({self.folder}/ under the root), point "
            f"--data.root at the folder that holds it, or pass --data.download true on a machine "
            "with network access."
        )

    def load(self) -> dict[str, torch.Tensor]:
        try:
            import torchvision.datasets as tvd
        except ImportError as err:
            raise ConfigError(
                f"{self.name} needs torchvision, which is not installed (import failed: {err}). "
                "Install the extra: pip install 'overparam-lit[vision]'."
            ) from None
        cls = getattr(tvd, self.tv_name)
        if not self.download and hasattr(cls, "_check_integrity"):
            # offline: accept files that are present (a subset or a re-pack has other checksums);
            # a damaged file still fails to unpickle and is reported below
            cls = type(cls.__name__, (cls,), {"_check_integrity": _files_present,
                                              "_load_meta": _load_meta_unchecked})
        out = {}
        for train, tag in ((True, "train"), (False, "test")):
            try:
                ds = cls(self.root, train=train, download=self.download)
            except (RuntimeError, OSError) as err:
                raise self._missing(f"{type(err).__name__}: {err}") from None
            except (EOFError, KeyError, ValueError, IndexError, TypeError, pickle.UnpicklingError) as err:
                raise ConfigError(
                    f"{self.name} files under root={self.root!r} could not be read ({type(err).__name__}: "
                    f"{str(err)[:160]}). A file is truncated, corrupt or not in torchvision's format: "
                    f"delete {Path(self.root) / self.folder} and put the data set there again (or pass "
                    "--data.download true on a machine with network access).") from None
            x = torch.as_tensor(np.asarray(ds.data)).float().div_(255)
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            mean = torch.tensor(self.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.std).view(1, -1, 1, 1)
            out[f"x_{tag}"] = ((x - mean) / std).contiguous()
            out[f"y_{tag}"] = torch.as_tensor(np.asarray(ds.targets)).long()
        return out

    def train_augment(self) -> Augment | None:
        return partial(random_crop_flip, padding=4, flip=True) if self.augment else None


class MNIST(VisionDataModule):
    """MNIST digits, 1x28x28, 10 classes (no augmentation by default)."""

    name = "MNIST"


class FashionMNIST(VisionDataModule):
    """Fashion-MNIST, 1x28x28, 10 classes (no augmentation by default)."""

    name = "FashionMNIST"


class CIFAR10(VisionDataModule):
    """CIFAR-10, 3x32x32, 10 classes; random crop and flip on by default (Nakkiran et al.)."""

    name = "CIFAR10"
    default_augment = True


class CIFAR100(VisionDataModule):
    """CIFAR-100, 3x32x32, 100 classes; random crop and flip on by default."""

    name = "CIFAR100"
    default_augment = True

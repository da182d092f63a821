"""Data modules of overparam-lit: in-memory tensors batched on the training device."""

from overparam_lit.data.base import ArrayDataModule, TensorBatches
from overparam_lit.data.mnist1d import MNIST1D
from overparam_lit.data.teacher_student import TeacherStudent
from overparam_lit.data.toy2d import Toy2D
from overparam_lit.data.vision import CIFAR10, CIFAR100, MNIST, FashionMNIST, VisionDataModule

__all__ = [
    "CIFAR10", "CIFAR100", "MNIST", "MNIST1D", "ArrayDataModule", "FashionMNIST",
    "TeacherStudent", "TensorBatches", "Toy2D", "VisionDataModule",
]

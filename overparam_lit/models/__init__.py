"""Width families (LightningModules) of overparam-lit."""

from overparam_lit.models.base import OverparamModule
from overparam_lit.models.cnn import CNN
from overparam_lit.models.mlp import MLP, LeNet300100, ResidualMLP
from overparam_lit.models.resnet import ResNet18

__all__ = ["CNN", "MLP", "LeNet300100", "OverparamModule", "ResNet18", "ResidualMLP"]

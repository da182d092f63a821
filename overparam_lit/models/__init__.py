"""Width families (LightningModules) of overparam-lit."""

from overparam_lit.models.base import OverparamModule
from overparam_lit.models.mlp import MLP

__all__ = ["MLP", "OverparamModule"]

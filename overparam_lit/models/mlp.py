"""MLP width family: ``depth`` hidden layers of ``width`` units."""

from __future__ import annotations

import math

from torch import nn

from overparam_lit.activations import ACTIVATIONS
from overparam_lit.models.base import OverparamModule
from overparam_lit.utils import check


class MLP(OverparamModule):
    """Fully connected net: flatten, ``depth`` x (Linear(width) -> activation), Linear(out).

    Args:
        depth: number of hidden layers (>= 1).
        activation: a name of :data:`overparam_lit.activations.ACTIVATIONS` (relu, tanh, gelu, ...).
        bias: whether linear layers have biases.
        **kwargs: ``width``, optimizer, scheduler and the linked data arguments of
            :class:`OverparamModule`.
    """

    def __init__(self, depth: int = 2, activation: str = "relu", bias: bool = True, **kwargs) -> None:
        check(
            isinstance(depth, int) and depth >= 1,
            "MLP depth must be an integer >= 1",
            depth,
            "Set --model.depth to the number of hidden layers, e.g. 2.",
        )
        check(
            activation in ACTIVATIONS,
            "unknown activation",
            activation,
            f"Set --model.activation to one of {', '.join(ACTIVATIONS)}.",
        )
        self.depth, self.activation, self.bias = depth, activation, bias
        super().__init__(**kwargs)

    def build_network(self) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(self.input_shape)
        for _ in range(self.depth):
            layers += [nn.Linear(fan_in, self.width, bias=self.bias), ACTIVATIONS[self.activation]()]
            fan_in = self.width
        layers.append(nn.Linear(fan_in, self.num_classes, bias=self.bias))
        return nn.Sequential(*layers)


class LeNet300100(OverparamModule):
    """LeNet-300-100 of Frankle & Carbin (2019): hidden layers of ``width`` and ``width // 3``
    ReLU units (``width=300`` is the original 784-300-100-10 net, 266,610 parameters)."""

    def __init__(self, width: int = 300, **kwargs) -> None:
        super().__init__(width=width, **kwargs)

    def check_width(self, width: int) -> None:
        """Widths below 3 would leave the second hidden layer empty."""
        check(
            isinstance(width, int) and not isinstance(width, bool) and width >= 3,
            "LeNet300100 width must be an integer >= 3 (the second layer has width // 3 units)",
            width,
            "Set --model.width (or every entry of --model.widths) to an integer >= 3, e.g. 300.",
        )

    def build_network(self) -> nn.Module:
        fan_in, w = math.prod(self.input_shape), self.width
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(fan_in, w), nn.ReLU(),
            nn.Linear(w, w // 3), nn.ReLU(),
            nn.Linear(w // 3, self.num_classes),
        )

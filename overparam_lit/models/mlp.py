"""MLP width family: ``depth`` hidden layers of ``width`` units; LeNet-300-100; the MNIST-1D
repository's residual MLP."""

from __future__ import annotations

import math

from torch import Tensor, nn

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


class ResidualBlockNet(nn.Module):
    """``x -> h = act(l1(x)); h = h + act(l2(h)); l3(h)``: two hidden layers of ``width`` units, the
    second added to the first (a residual connection)."""

    def __init__(self, fan_in: int, width: int, num_classes: int, activation: str = "relu") -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.l1, self.l2 = nn.Linear(fan_in, width), nn.Linear(width, width)
        self.l3 = nn.Linear(width, num_classes)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.l1(self.flatten(x)))
        h = h + self.act(self.l2(h))
        return self.l3(h)


class ResidualMLP(OverparamModule):
    """The MLP of the MNIST-1D repository (Greydanus 2020), which its lottery-ticket notebook prunes:
    two hidden layers of ``width`` units whose second is residual, ``h = relu(l1(x))``,
    ``h = h + relu(l2(h))``, output ``l3(h)``. ``width=500`` on MNIST-1D is the notebook's
    40-500-500-10 net (276,010 parameters). Layers ``net.l1``, ``net.l2``, ``net.l3`` (the output).

    Args:
        activation: a name of :data:`overparam_lit.activations.ACTIVATIONS`.
        **kwargs: ``width``, optimizer, scheduler and the linked data arguments of
            :class:`OverparamModule`.
    """

    def __init__(self, activation: str = "relu", **kwargs) -> None:
        check(activation in ACTIVATIONS, "unknown activation", activation,
              f"Set --model.activation to one of {', '.join(ACTIVATIONS)}.")
        self.activation = activation
        super().__init__(**kwargs)

    def build_network(self) -> nn.Module:
        return ResidualBlockNet(math.prod(self.input_shape), self.width, self.num_classes, self.activation)

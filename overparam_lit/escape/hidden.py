"""The hidden layers of the networks that widening changes (no Lightning).

Networks are ``nn.Sequential`` stacks of ``Linear`` / ``Conv`` layers, optional ``BatchNorm``
after a producer, elementwise activations, pools and ``Flatten`` (the MLP and CNN families). A
hidden layer is a producer (its units or channels), its optional norm and the layer that consumes
its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from overparam_lit.utils import ConfigError

_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class HiddenLayer:
    """Indices (in the Sequential) of a hidden layer's producer, optional norm and consumer."""

    producer: int
    norm: int | None
    consumer: int
    size: int


def as_sequential(net: nn.Module) -> nn.Sequential:
    """``net`` itself, refused unless it is an ``nn.Sequential`` (what widening works on)."""
    if not isinstance(net, nn.Sequential):
        raise ConfigError(
            f"widening works on nn.Sequential networks of Linear/Conv layers (the MLP, LeNet and CNN "
            f"families); got {type(net).__name__}. Use one of those families (or pass a model's .net)."
        )
    return net


def hidden_layers(net: nn.Module) -> list[HiddenLayer]:
    """The hidden layers of a Sequential network, in order (every producer but the last)."""
    seq = as_sequential(net)
    layers: list[HiddenLayer] = []
    prod: int | None = None
    norm: int | None = None
    for i, m in enumerate(seq):
        if isinstance(m, _PRODUCERS):
            if prod is not None:
                size = seq[prod].out_features if isinstance(seq[prod], nn.Linear) else seq[prod].out_channels
                layers.append(HiddenLayer(prod, norm, i, int(size)))
            prod, norm = i, None
        elif isinstance(m, _NORMS):
            if prod is None or norm is not None:
                raise ConfigError(f"cannot widen: BatchNorm at position {i} does not follow a "
                                  "Linear/Conv layer directly. Use the MLP or CNN families.")
            norm = i
        elif any(True for _ in m.parameters()):
            raise ConfigError(f"cannot widen: layer {i} ({type(m).__name__}) has parameters but is "
                              "not Linear, Conv or BatchNorm. Use the MLP or CNN families.")
    return layers


def hidden_sizes(net: nn.Module) -> list[int]:
    """The sizes (units or channels) of the hidden layers of a Sequential network, in order."""
    return [h.size for h in hidden_layers(net)]

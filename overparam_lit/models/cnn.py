"""Nakkiran et al. (2019) 5-layer CNN width family, for 1-D ``(C, L)`` and 2-D ``(C, H, W)`` inputs."""

from __future__ import annotations

from torch import nn

from overparam_lit.models.base import OverparamModule
from overparam_lit.utils import ConfigError


def conv_layers(input_shape: tuple[int, ...], family: str) -> tuple[type, type, type, type]:
    """Conv, BatchNorm, MaxPool and AdaptiveAvgPool classes matching a 1-D or 2-D input shape."""
    if len(input_shape) == 2:
        return nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveMaxPool1d
    if len(input_shape) == 3:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d
    raise ConfigError(
        f"{family} takes 1-D inputs (C, L) or 2-D inputs (C, H, W) (got input_shape "
        f"{tuple(input_shape)!r}). Use the MLP for flat inputs such as Toy2D or TeacherStudent, "
        "or a data set with signal or image inputs (MNIST1D, MNIST, CIFAR10)."
    )


class CNN(OverparamModule):
    """Four conv-BN-ReLU blocks of k, 2k, 4k, 8k channels (3x3, stride 1, pad 1) with max-pools
    1, 2, 2, 8, then a linear layer (Nakkiran et al. 2019, "Deep Double Descent").

    The last pool is a global max-pool: on 32x32 inputs it is exactly MaxPool(8), and it also
    fits 28x28 images and length-40 signals. ``CNN(width=64)`` on 3x32x32 with 10 classes has
    1,558,026 parameters. Inputs must be at least 4 long on each spatial axis.
    """

    def build_network(self) -> nn.Module:
        conv, bn, pool, global_pool = conv_layers(self.input_shape, "CNN")
        if min(self.input_shape[1:]) < 4:
            raise ConfigError(
                f"CNN needs spatial sizes of at least 4 (got input_shape {self.input_shape!r}); "
                "its pools halve the signal twice. Use a longer input or the MLP."
            )
        k, c_in = self.width, self.input_shape[0]
        layers: list[nn.Module] = []
        for c_out, p in zip((k, 2 * k, 4 * k, 8 * k), (1, 2, 2, None), strict=True):
            layers += [conv(c_in, c_out, 3, 1, 1, bias=True), bn(c_out), nn.ReLU()]
            layers.append(pool(p) if p is not None else global_pool(1))
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(8 * k, self.num_classes)]
        return nn.Sequential(*layers)

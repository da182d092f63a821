"""Pre-activation ResNet18 width family (He et al. 2016), for 1-D and 2-D inputs."""

from __future__ import annotations

from torch import Tensor, nn

from overparam_lit.models.base import OverparamModule
from overparam_lit.models.cnn import conv_layers


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, with an identity or 1x1-conv shortcut."""

    def __init__(self, conv: type, bn: type, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = bn(c_in), conv(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = bn(c_out), conv(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (
            conv(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """Stem conv3x3(k), stages of two blocks with k, 2k, 4k, 8k channels and strides 1, 2, 2, 2,
    final BN-ReLU, global average pool, linear."""

    def __init__(self, input_shape: tuple[int, ...], width: int, num_classes: int) -> None:
        super().__init__()
        conv, bn, _, _ = conv_layers(input_shape, "ResNet18")
        k = width
        self.stem = conv(input_shape[0], k, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        c_in = k
        for c_out, stride in zip((k, 2 * k, 4 * k, 8 * k), (1, 2, 2, 2), strict=True):
            blocks += [PreActBlock(conv, bn, c_in, c_out, stride), PreActBlock(conv, bn, c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.relu = bn(8 * k), nn.ReLU()
        pool = nn.AdaptiveAvgPool1d if len(input_shape) == 2 else nn.AdaptiveAvgPool2d
        self.pool, self.flatten = pool(1), nn.Flatten()
        self.linear = nn.Linear(8 * k, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn(self.blocks(self.stem(x))))
        return self.linear(self.flatten(self.pool(out)))


class ResNet18(OverparamModule):
    """Pre-activation ResNet18 with stages k, 2k, 4k, 8k; ``width=64`` is the standard ResNet18
    (11,172,170 parameters on CIFAR-10, counting the final BN of the pre-activation design).
    Nakkiran et al. 2019 sweep k from 1 to 64."""

    def build_network(self) -> nn.Module:
        return PreActResNet18(self.input_shape, self.width, self.num_classes)

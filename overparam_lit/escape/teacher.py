"""Teacher-student regression data with a teacher of any activation.

With ``activation="relu"`` the teacher and the data are exactly those of
:class:`overparam_lit.data.TeacherStudent` (the same :func:`make_teacher` weights, same inputs for the
same ``data_seed``), so a script's numbers can be reproduced with the CLI config. Other
activations keep the teacher's weights and swap its nonlinearity (smooth activations such as
``tanh`` or ``softplus`` make the splitting curvature of Fukumizu & Amari (2000) visible; a
ReLU net's second derivative vanishes almost everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from overparam_lit.activations import ACTIVATIONS
from overparam_lit.utils import check


def make_teacher(input_dim: int, width: int, depth: int, out_dim: int, seed: int) -> nn.Module:
    """A random ReLU MLP teacher (weights N(0, 1/fan_in), zero biases) from its own seed; the
    global RNG is untouched. ``overparam_lit.data.TeacherStudent`` labels its data with it."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = input_dim
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, out_dim))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / layer.in_features**0.5)
                layer.bias.zero_()
    return net


def teacher_net(input_dim: int, width: int, activation: str = "relu", depth: int = 1,
                out_dim: int = 1, seed: int = 1) -> nn.Module:
    """A random teacher MLP (Gaussian weights with variance 1/fan_in, zero biases)."""
    check(activation in ACTIVATIONS, "unknown teacher activation", activation,
          f"Use one of {', '.join(ACTIVATIONS)}.")
    net = make_teacher(input_dim, width, depth, out_dim, seed)
    for i, m in enumerate(net):
        if isinstance(m, nn.ReLU):
            net[i] = ACTIVATIONS[activation]()
    return net


@dataclass
class TeacherData:
    """Training and test sets labelled by a teacher; ``target_variance`` of the training targets."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    teacher: nn.Module
    target_variance: float


def make_teacher_data(input_dim: int = 2, teacher_width: int = 4, activation: str = "relu",
                      n_train: int = 10_000, n_test: int = 1000, data_seed: int = 0,
                      teacher_depth: int = 1, out_dim: int = 1) -> TeacherData:
    """Gaussian inputs ``N(0, I_d)`` and noiseless teacher outputs.

    Mirrors :class:`overparam_lit.data.TeacherStudent` (``teacher seed = data_seed + 1``,
    inputs from ``data_seed``, the first ``n_train`` samples for training).
    """
    check(n_train >= 2 and n_test >= 1, "need n_train >= 2 and n_test >= 1", (n_train, n_test),
          "Use more samples.")
    gen = torch.Generator().manual_seed(data_seed)
    teacher = teacher_net(input_dim, teacher_width, activation, teacher_depth, out_dim, data_seed + 1)
    x = torch.randn(n_train + n_test, input_dim, generator=gen)
    with torch.no_grad():
        y = teacher(x)
    var = float(y[:n_train].var(dim=0, unbiased=False).mean())
    check(var > 0 and math.isfinite(var), "the teacher's outputs are constant", var,
          "Use another data_seed or a wider teacher.")
    return TeacherData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], teacher, var)

"""Width families: parameter counts against closed-form formulas, shapes, subclassing contract."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from overparam_lit.data import MNIST1D
from overparam_lit.models import CNN, MLP, LeNet300100, OverparamModule, ResNet18
from overparam_lit.utils import ConfigError


def mlp_count(d_in: int, w: int, depth: int, c: int) -> int:
    return d_in * w + w + (depth - 1) * (w * w + w) + w * c + c


def cnn_count(c_in: int, k: int, c: int, ksize: int) -> int:
    total, prev = 0, c_in
    for out in (k, 2 * k, 4 * k, 8 * k):
        total += prev * out * ksize + out + 2 * out  # conv weight + bias, BN weight + bias
        prev = out
    return total + 8 * k * c + c




@pytest.mark.parametrize("width,depth", [(1, 1), (16, 2), (256, 3)])
def test_mlp_counts(width: int, depth: int) -> None:
    m = MLP(width=width, depth=depth, input_shape=(1, 40), num_classes=10)
    assert m.num_params == mlp_count(40, width, depth, 10)


def test_cnn_count_matches_nakkiran() -> None:
    assert CNN(width=64, input_shape=(3, 32, 32), num_classes=10).num_params == 1_558_026


@pytest.mark.parametrize("width", [1, 4, 16])
def test_cnn_counts(width: int) -> None:
    assert CNN(width=width, input_shape=(3, 32, 32), num_classes=10).num_params == cnn_count(3, width, 10, 9)
    assert CNN(width=width, input_shape=(1, 40), num_classes=10).num_params == cnn_count(1, width, 10, 3)


def test_resnet18_standard_count() -> None:
    # 11,171,146 is the common PreActResNet18 without the final BN; the final BN adds 2 x 512
    assert ResNet18(width=64, input_shape=(3, 32, 32), num_classes=10).num_params == 11_171_146 + 1024


@pytest.mark.parametrize("width", [1, 2, 8])
def test_resnet18_counts(width: int) -> None:
    def count(c_in: int, ksize: int) -> int:
        k, total, prev = width, c_in * width * ksize, width
        for out, stride in zip((k, 2 * k, 4 * k, 8 * k), (1, 2, 2, 2), strict=True):
            total += 2 * prev + prev * out * ksize + 2 * out + out * out * ksize  # first block
            if stride != 1 or prev != out:
                total += prev * out  # 1x1 shortcut
            total += 2 * out + out * out * ksize + 2 * out + out * out * ksize  # second block
            prev = out
        return total + 2 * 8 * k + 8 * k * 10 + 10

    assert ResNet18(width=width, input_shape=(3, 32, 32), num_classes=10).num_params == count(3, 9)
    assert ResNet18(width=width, input_shape=(1, 40), num_classes=10).num_params == count(1, 3)


def test_lenet_300_100_count() -> None:
    assert LeNet300100(input_shape=(1, 28, 28)).num_params == 784 * 300 + 300 + 300 * 100 + 100 + 1010


@pytest.mark.parametrize("family,shape", [(CNN, (1, 40)), (CNN, (3, 32, 32)), (ResNet18, (1, 40)),
                                          (ResNet18, (1, 28, 28)), (CNN, (1, 28, 28))])
def test_outputs_shape(family: type, shape: tuple[int, ...]) -> None:
    m = family(width=2, input_shape=shape, num_classes=7)
    assert m(torch.randn(3, *shape)).shape == (3, 7)


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -3}, {"depth": 0}, {"activation": "swish2"}])
def test_bad_mlp_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as err:
        MLP(input_shape=(1, 40), num_classes=10, **kwargs)
    assert "got" in str(err.value) and "Set --model." in str(err.value)


@pytest.mark.parametrize("family", [CNN, ResNet18])
def test_families_refuse_flat_inputs(family: type) -> None:
    with pytest.raises(ConfigError, match=r"got input_shape \(2,\)"):
        family(width=4, input_shape=(2,), num_classes=3)


def test_new_study_overrides_one_method(tmp_path) -> None:
    """A network defined here gets metrics, optimizer and logging from the base class."""

    class Quadratic(nn.Module):
        def __init__(self, d: int, k: int, c: int) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(d, k), nn.Linear(k, c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x.flatten(1)) ** 2)

    class QuadraticNet(OverparamModule):
        def build_network(self) -> nn.Module:
            return Quadratic(40, self.width, self.num_classes)

    dm = MNIST1D(batch_size=200)
    model = QuadraticNet(
        width=8, input_shape=dm.input_shape, num_classes=dm.num_classes,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    )
    assert model.num_params == 40 * 8 + 8 + 8 * 10 + 10
    trainer = L.Trainer(max_epochs=2, logger=L.pytorch.loggers.CSVLogger(tmp_path, name="", version=""),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert isinstance(trainer.optimizers[0], torch.optim.SGD)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/acc", "val/loss"} <= set(metrics)
    # the logged validation accuracy equals an independent evaluation of the trained net
    x, _, y_true = dm.probe_set(None, "test")
    with torch.no_grad():
        acc = (model.net(x).argmax(1) == y_true).float().mean()
    assert abs(float(metrics["val/acc"]) - float(acc)) < 1e-6

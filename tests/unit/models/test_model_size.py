"""The model's size is logged once per trainer (a fit and the test after it), again for another
trainer or when the network changes; the module, not the trainer, remembers it."""

from __future__ import annotations

from lightning.pytorch.loggers import Logger

from overparam_lit.models import MLP
from overparam_lit.testing import Blobs, tiny_trainer


class Sizes(Logger):
    """Records every logged ``model/num_params``."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[float] = []

    name, version, experiment = "sizes", 0, None

    def log_metrics(self, metrics, step=None) -> None:
        if "model/num_params" in metrics:
            self.sizes.append(metrics["model/num_params"])

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_size_is_logged_once_per_trainer(tmp_path) -> None:
    model, data = MLP(width=8, input_shape=(8,), num_classes=4), Blobs()
    params = sum(p.numel() for p in model.parameters())
    first = Sizes()
    trainer = tiny_trainer(tmp_path / "a", max_epochs=1, logger=first)
    trainer.fit(model, data)
    trainer.test(model, data, verbose=False)
    assert first.sizes == [params]  # the fit and its test: once
    second = Sizes()
    tiny_trainer(tmp_path / "b", max_epochs=1, logger=second).fit(model, data)
    assert second.sizes == [params]  # another trainer logs it again
    model.log_model_size(again=True)  # the network changed (a widening): logged again
    assert second.sizes == [params, params]

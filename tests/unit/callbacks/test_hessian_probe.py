"""HessianProbe callback: logged keys, saved arrays, exact values, no effect on training."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from overparam_lit.callbacks.hessian import HessianProbe, log_spaced_steps
from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP, OverparamModule
from overparam_lit.testing import tiny_trainer
from overparam_lit.utils import ConfigError


class BNDropNet(OverparamModule):
    """Small net with BatchNorm and dropout: both could be disturbed by a careless probe."""

    def build_network(self) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(), nn.Linear(40, self.width), nn.BatchNorm1d(self.width), nn.ReLU(),
            nn.Dropout(0.3), nn.Linear(self.width, self.num_classes),
        )


def dm() -> MNIST1D:
    return MNIST1D(num_samples=400, batch_size=50, train_subset=200)


def fit(model, callbacks, tmp_path, steps=6, logger=False):
    trainer = tiny_trainer(tmp_path, callbacks, max_steps=steps, logger=logger, limit_val_batches=0)
    trainer.fit(model, datamodule=dm())
    return trainer


def snapshot(model, trainer):
    opt = trainer.optimizers[0].state_dict()
    return (
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        {n: b.clone() for n, b in model.named_buffers()},
        {k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in v.items()}
         for k, v in opt["state"].items()},
    )


@pytest.mark.parametrize("eval_mode", [True, False])
def test_probe_leaves_training_untouched(tmp_path, eval_mode):
    runs = []
    for with_probe in (False, True):
        torch.manual_seed(0)
        model = BNDropNet(width=16)
        cbs = [HessianProbe(schedule="steps", every=2, probe_size=60, k=2, lanczos_iters=10,
                            slq_runs=2, slq_iters=5, eval_mode=eval_mode, save_figure=False)] \
            if with_probe else []
        trainer = fit(model, cbs, tmp_path / str(with_probe))
        if with_probe:
            assert cbs[0].probed_steps == [0, 2, 4, 6]
            assert model.net.training  # training mode restored
        runs.append(snapshot(model, trainer))
    for a, b in zip(runs[0], runs[1], strict=True):
        assert a.keys() == b.keys() and len(a) > 0
        for key in a:
            if isinstance(a[key], dict):
                for kk in a[key]:
                    assert torch.equal(torch.as_tensor(a[key][kk]), torch.as_tensor(b[key][kk]))
            else:
                assert torch.equal(a[key], b[key]), key


@pytest.mark.numeric
def test_probe_logs_saves_and_matches_exact_hessian(tmp_path):
    torch.manual_seed(0)
    model = MLP(width=8, depth=1, activation="tanh")
    probe = HessianProbe(schedule="steps", every=4, probe_size=50, k=3, lanczos_iters=60,
                         tol=1e-6, slq_runs=3, slq_iters=20, per_layer=True)
    fit(model, [probe], tmp_path, steps=4, logger=CSVLogger(tmp_path, name="csv"))
    with open(next(tmp_path.glob("csv/**/metrics.csv"))) as fh:
        rows = list(csv.DictReader(fh))
    keys = {k for r in rows for k, v in r.items() if v != ""}
    need = {"hessian/lambda_max", "hessian/lambda_min", "hessian/negative_fraction",
            "hessian/trace", "hessian/num_hvps", "hessian/top_k/0", "hessian/top_k/2",
            "hessian/step", "hessian/layer/1/lambda_max"}
    assert need <= keys
    files = sorted(p.name for p in (tmp_path / "hessian").iterdir())
    assert files == ["density_step00000000.png", "density_step00000004.png",
                     "probe_step00000000.npz", "probe_step00000004.npz"]
    saved = np.load(tmp_path / "hessian" / "probe_step00000004.npz")
    # independent: the exact Hessian of the final model on the same probe set, eval mode
    x, y, _ = dm().probe_set(50, "train", 0)
    net = model.net.eval().double()
    params = dict(net.named_parameters())
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def f(v):
        d, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            d[n] = v[i : i + s.numel()].reshape(s)
            i += s.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(net, d, (x.double(),)), y)

    ev = np.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat).numpy())
    assert float(saved["lambda_max"]) == pytest.approx(ev[-1], rel=1e-4)
    assert float(saved["lambda_min"]) == pytest.approx(ev[0], rel=1e-3)
    np.testing.assert_allclose(saved["top"], ev[::-1][:3], rtol=1e-4)
    assert int(saved["step"]) == 4 and int(saved["num_hvps"]) > 0
    last = [r for r in rows if r.get("hessian/lambda_max")][-1]
    assert float(last["hessian/lambda_max"]) == pytest.approx(ev[-1], rel=1e-4)
    state = probe.state_dict()
    again = HessianProbe()
    again.load_state_dict(state)
    assert again.probed_steps == [0, 4] and len(again.history) == 2


def test_log_spaced_schedule(tmp_path):
    assert log_spaced_steps(1000, 4) == [1, 10, 100, 1000]
    probe = HessianProbe(schedule="log_steps", num_probes=3, probe_size=20, k=1,
                         lanczos_iters=4, slq_runs=0, save_figure=False, probe_at_start=False)
    fit(MLP(width=4, depth=1), [probe], tmp_path, steps=9)
    assert probe.probed_steps == [1, 3, 9]


def test_bad_input_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown Hessian probe schedule"):
        HessianProbe(schedule="sometimes")
    with pytest.raises(ConfigError, match="probe set is empty"):
        HessianProbe(probe_size=0)
    with pytest.raises(ConfigError, match="exceeds the number of parameters"):
        fit(MLP(width=2, depth=1), [HessianProbe(k=1000, lanczos_iters=2000, probe_size=50)], tmp_path)

    class VectorLoss(MLP):
        def loss(self, outputs, targets):
            return nn.functional.cross_entropy(outputs, targets, reduction="none")

    with pytest.raises(ConfigError, match="scalar mean loss"):
        fit(VectorLoss(width=2, depth=1), [HessianProbe(k=1, lanczos_iters=2, probe_size=50)], tmp_path)

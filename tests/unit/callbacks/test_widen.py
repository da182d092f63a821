"""Widen callback: the function is unchanged at the widening step (MLP, BatchNorm CNN, members),
duplicate widening at a critical point gives negative curvature seen by the HessianProbe, members
widen as their single runs, a resumed fit equals an uninterrupted one, bad input is refused."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tolerances import adam_zero_grad_tol, tol
from torch import nn

from overparam_lit.callbacks import HessianProbe, IterativeMagnitudePruning, Widen
from overparam_lit.data import MNIST1D, TeacherStudent
from overparam_lit.escape import add_units, polish_to_critical_point
from overparam_lit.models import CNN, MLP, LeNet300100, ResNet18
from overparam_lit.testing import tiny_trainer
from overparam_lit.utils import ConfigError

MSE = nn.functional.mse_loss


def _data() -> MNIST1D:
    return MNIST1D(batch_size=50, train_subset=200, eval_batch_size=500)


def _trainer(root: Path, steps: int = -1, epochs: int = -1, callbacks: list | None = None,
             precision: str = "32-true", logger: bool = False, ckpt: bool = False) -> L.Trainer:
    cbs = list(callbacks or [])
    if ckpt:
        cbs.append(ModelCheckpoint(dirpath=str(root / "ckpt"), filename="{epoch}", save_top_k=-1,
                                   every_n_epochs=1))
    return tiny_trainer(root, cbs, max_steps=steps, max_epochs=epochs,
                        logger=CSVLogger(str(root), name="", version="") if logger else False,
                        enable_checkpointing=ckpt, limit_val_batches=0, precision=precision,
                        log_every_n_steps=1)


def _build(cls, seed: int, **kw):
    L.seed_everything(seed, verbose=False)
    return cls(input_shape=(1, 40), **kw)


class Capture(L.Callback):
    """Copies of the module's network at global step ``step`` (at ``on_train_start`` for 0, else at
    the end of that step), taken where the callback sits in the list."""

    def __init__(self, step: int) -> None:
        self.step, self.net = step, None

    def _grab(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step and self.net is None:
            self.net = copy.deepcopy(pl_module.net)

    def on_train_start(self, trainer, pl_module) -> None:
        self._grab(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self._grab(trainer, pl_module)


def _outputs(net: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    net = copy.deepcopy(net).train(train)  # train mode: BatchNorm's batch statistics, no side effects
    with torch.no_grad():
        return net(x)


# ---- the function is unchanged ------------------------------------------------------------------
CASES = [
    (MLP, {"width": 4, "depth": 2}, "duplicate", 2),
    (MLP, {"width": 4, "depth": 2}, "zero", 1),
    (CNN, {"width": 2}, "duplicate", 1),
    (CNN, {"width": 2}, "zero", 1),
    (MLP, {"width": 4, "depth": 2, "seeds": 3}, "duplicate", 1),
]


@pytest.mark.parametrize(("cls", "kw", "method", "units"), CASES,
                         ids=["mlp_dup", "mlp_zero", "cnn_bn_dup", "cnn_bn_zero", "members_dup"])
@pytest.mark.numeric
def test_function_unchanged_at_the_widening_step(tmp_path, cls, kw, method, units):
    model = _build(cls, 0, **kw)
    before, after = Capture(3), Capture(3)
    widen = Widen(step=3, method=method, units=units, ratio=0.3, probe_size=None)
    _trainer(tmp_path, steps=5, callbacks=[before, widen, after], logger=True).fit(model, _data())
    x = _data().probe_set(64, "val")[0]
    for train in (False, True):
        ref, got = _outputs(before.net, x, train), _outputs(after.net, x, train)
        # float32: the wide net sums split and zero units in other sums, and in train mode
        # BatchNorm's statistics sum 64 samples x 40 positions; the rounding is relative to the
        # outputs' scale (~3): tol(float32, 64 * 40, scale) = 1.7e-4. Measured up to 9.5e-7 (the
        # old absolute 1e-6 failed with AVX2 kernels and 2 threads); a widening that changes the
        # function moves outputs by O(scale)
        torch.testing.assert_close(got, ref, atol=tol(torch.float32, 64 * 40, float(ref.abs().max())), rtol=0)
    # the wide network is the family's network at width k + units, and the module says so
    family = _build(cls, 0, **{**kw, "width": kw["width"] + units})
    assert model.width == family.width and model.num_params == family.num_params
    assert {n: p.shape for n, p in after.net.named_parameters()} == \
        {n: p.shape for n, p in family.net.named_parameters()}
    assert [r["width"] for r in model.member_rows()] == [kw["width"] + units] * model.num_members
    record = json.loads((tmp_path / "widen" / "widen.json").read_text())
    assert record["step"] == 3 and record["method"] == method and record["ratio"] == 0.3
    assert (record["width_before"], record["width_after"]) == (kw["width"], kw["width"] + units)
    assert record["num_params_after"] == family.num_params
    assert record["loss_after"] == pytest.approx(record["loss_before"], rel=1e-6)
    assert len(record["members"]) == model.num_members
    if method == "duplicate":  # every new unit names the unit it split
        assert [len(s) for s in record["members"][0]["units_chosen"]] == \
            [b - a for a, b in zip(record["hidden_sizes_before"], record["hidden_sizes_after"], strict=True)]
    # the loss on the fixed set, computed independently from the captured networks
    dm = _data()
    xs, ys, _ = dm.probe_set(None)
    with torch.no_grad():
        out = copy.deepcopy(before.net).eval()(xs)
    out = out if model.members is not None else out.unsqueeze(0)
    losses = [float(nn.functional.cross_entropy(o, ys)) for o in out]
    assert record["loss_before"] == pytest.approx(float(np.mean(losses)), rel=1e-5)
    with open(tmp_path / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("widen/step")]
    assert len(rows) == 1 and float(rows[0]["widen/width"]) == kw["width"] + units
    assert float(rows[0]["widen/loss_after"]) == pytest.approx(record["loss_after"], rel=1e-6)
    with open(tmp_path / "metrics.csv") as fh:  # the model size is logged again for the new width
        sizes = [(float(r["model/width"]), float(r["model/num_params"])) for r in csv.DictReader(fh)
                 if r.get("model/width")]
    assert sizes == [(kw["width"], record["num_params_before"]),
                     (kw["width"] + units, record["num_params_after"])]


# ---- a critical point becomes a saddle ------------------------------------------------------------
class Polish(L.Callback):
    """Polishes the (float64) network to a critical point of the full training set once the fit
    has converted it (``on_fit_start``), and keeps a copy of the narrow critical point."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.narrow = x, y, None

    def on_fit_start(self, trainer, pl_module) -> None:
        assert next(pl_module.parameters()).dtype == torch.float64
        polish_to_critical_point(pl_module.net, self.x, self.y, lbfgs_rounds=4, newton_steps=8,
                                 max_iter=500, tolerance_grad=1e-12)
        self.narrow = copy.deepcopy(pl_module.net)


def _critical_student(seed: int = 0, lr: float = 0.1):
    """A width-2 tanh student of a width-4 ReLU teacher (80 samples, full batch, SGD) and the
    callback that polishes it to a critical point at the start of a float64 fit."""
    dm = TeacherStudent(input_dim=2, teacher_width=4, n_train=80, n_test=8, batch_size=80)
    L.seed_everything(seed, verbose=False)
    model = MLP(width=2, depth=1, activation="tanh", input_shape=(2,), num_classes=1, task="regression",
                optimizer=lambda p: torch.optim.SGD(p, lr=lr))
    x, y, _ = dm.probe_set(None)
    return model, dm, x.double(), y.double(), Polish(x.double(), y.double())


def _flat_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, fn=MSE):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes, strict=True)}
        return fn(torch.func.functional_call(net, params, (x,)), y)

    return loss, torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def test_duplicate_at_a_critical_point_gives_negative_curvature(tmp_path):
    model, dm, x, y, polish = _critical_student()
    probe = HessianProbe(schedule="steps", every=1000, probe_at_start=True, probe_size=80, k=1,
                         lanczos_iters=40, tol=1e-10, slq_runs=0, dtype="float64", save_figure=False)
    after = Capture(0)
    widen = Widen(step=0, method="duplicate", unit="largest", ratio=0.5, probe_size=None)
    _trainer(tmp_path, steps=1, precision="64-true", callbacks=[polish, probe, widen, after]).fit(model, dm)
    narrow = polish.narrow
    loss, theta = _flat_loss(narrow, x, y)
    assert float(torch.func.grad(loss)(theta).norm()) < 1e-10
    assert float(torch.linalg.eigvalsh(torch.func.hessian(loss)(theta))[0]) > -1e-10  # a minimum
    record = json.loads((tmp_path / "widen" / "widen.json").read_text())
    j = record["members"][0]["units_chosen"][0]
    assert j == [int(narrow[3].weight.abs().argmax())]  # "largest": the largest outgoing weight
    wide = add_units(narrow, 0, 1, "duplicate", ratio=0.5, sources=j)  # independent widening
    for a, b in zip(wide.parameters(), after.net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert record["loss_after"] == pytest.approx(record["loss_before"], rel=1e-12)
    loss, theta = _flat_loss(wide, x, y)
    assert float(torch.func.grad(loss)(theta).norm()) < 1e-10  # still a critical point
    dense = torch.linalg.eigvalsh(torch.func.hessian(loss)(theta))
    assert float(dense[0]) < -1e-4  # ... now a saddle
    got = np.load(tmp_path / "hessian" / "probe_step00000000.npz")
    assert int(got["dim"]) == theta.numel() and bool(got["lambda_min_resolved"])
    assert float(got["lambda_min"]) == pytest.approx(float(dense[0]), rel=1e-6)
    assert record["probes"] == {"before": None, "after": 0}


def test_nudge_is_needed_to_leave_an_exact_saddle(tmp_path):
    """Gradient descent started exactly on the saddle stays there; a small split nudge escapes."""
    finals = {}
    for nudge in (0.0, 1e-2):
        model, dm, x, y, polish = _critical_student(lr=0.5)
        widen = Widen(step=0, unit="largest", nudge=nudge, probe_size=None)
        trainer = _trainer(tmp_path / str(nudge), steps=600, precision="64-true", callbacks=[polish, widen])
        trainer.fit(model, dm)
        with torch.no_grad():
            finals[nudge] = float(MSE(model(x), y))
        record = widen.record
        if nudge:  # the split direction changes the loss only at second order
            assert abs(record["loss_nudged"] - record["loss_before"]) < 1e-3 * nudge
    assert finals[0.0] == pytest.approx(record["loss_before"], rel=1e-9)
    assert finals[1e-2] < 0.9 * record["loss_before"]


# ---- probes around the widening ------------------------------------------------------------------
def test_hessian_probes_before_and_after_whatever_the_order(tmp_path):
    dense = {}
    for order in ("probe_first", "widen_first"):
        model = _build(MLP, 0, width=4, depth=1)
        probe = HessianProbe(schedule="steps", every=3, probe_at_start=False, probe_size=100, k=2,
                             lanczos_iters=60, tol=1e-8, slq_runs=0, dtype="float64", save_figure=False)
        widen, after = Widen(step=3, units=1), Capture(3)
        cbs = [probe, widen, after] if order == "probe_first" else [widen, after, probe]
        root = tmp_path / order
        _trainer(root, steps=6, callbacks=cbs).fit(model, _data())
        assert sorted(probe.probed_steps) == [2, 3, 6]
        narrow_dim = 40 * 4 + 4 + 4 * 10 + 10
        wide_dim = 40 * 5 + 5 + 5 * 10 + 10
        dims = {s: int(np.load(root / "hessian" / f"probe_step{s:08d}.npz")["dim"]) for s in (2, 3, 6)}
        assert dims == {2: narrow_dim, 3: wide_dim, 6: wide_dim}
        assert json.loads((root / "widen" / "widen.json").read_text())["probes"] == {"before": 2, "after": 3}
        x, y, _ = _data().probe_set(100, "train", 0)
        loss, theta = _flat_loss(after.net.double(), x.double(), y, nn.functional.cross_entropy)
        dense[order] = float(torch.linalg.eigvalsh(torch.func.hessian(loss)(theta))[-1])
        got = np.load(root / "hessian" / "probe_step00000003.npz")
        assert float(got["lambda_max"]) == pytest.approx(dense[order], rel=1e-5)
    assert dense["probe_first"] == pytest.approx(dense["widen_first"], rel=1e-12)


# ---- members widen as their single runs -----------------------------------------------------------
def _same(stack, single, i: int, rel: float) -> None:
    """Member ``i`` equals the single run to ``rel`` times the parameter scale (largest magnitude)."""
    mine = {**dict(single.net.named_parameters()), **dict(single.net.named_buffers())}
    theirs = {**dict(stack.net.named_parameters()), **dict(stack.net.named_buffers())}
    assert set(mine) == set(theirs)
    scale = max(float(t.double().abs().max()) for t in mine.values() if t.is_floating_point())
    for name, t in mine.items():
        err = float((theirs[name][i].double() - t.double()).abs().max())
        assert err <= rel * scale, (name, err, rel * scale)


@pytest.mark.numeric
@pytest.mark.parametrize(("cls", "kw"), [(MLP, {"width": 4}), (CNN, {"width": 2})], ids=["mlp", "cnn_bn"])
def test_member_of_a_widened_stack_equals_the_widened_single_fit(tmp_path, cls, kw):
    def widen():
        return Widen(step=3, units=1, unit="random", nudge=1e-2, nudge_direction="split", seed=4)

    seeds = [0, 1, 2]
    stack = _build(cls, 7, seeds=seeds, **kw)
    _trainer(tmp_path / "stack", steps=6, precision="64-true", callbacks=[widen()]).fit(stack, _data())
    rec = json.loads((tmp_path / "stack" / "widen" / "widen.json").read_text())
    for i, s in enumerate(seeds):
        single = _build(cls, s, **kw)
        _trainer(tmp_path / f"s{s}", steps=6, precision="64-true", callbacks=[widen()]).fit(single, _data())
        # float64, 6 steps of Adam, BatchNorm conv biases with zero gradients (see test_members'
        # ADAM_BN_REL): 6e-8 of the parameter scale; measured up to 5e-10, another seed is off by O(1)
        _same(stack, single, i, adam_zero_grad_tol(torch.float64, 50 * 40, steps=6))
        own = json.loads((tmp_path / f"s{s}" / "widen" / "widen.json").read_text())
        assert rec["members"][i]["units_chosen"] == own["units_chosen"]
        # the loss of parameters that agree to the tolerance above, float64: measured 1e-12 relative
        assert rec["members"][i]["loss_nudged"] == pytest.approx(own["loss_nudged"], rel=1e-9)
    assert rec["members"][0]["units_chosen"] != rec["members"][1]["units_chosen"]  # own choices


# ---- checkpoints -------------------------------------------------------------------------------
def _resume_model(members: bool):
    kw = {"seeds": [0, 1, 2]} if members else {}

    def opt(p):
        return torch.optim.Adam(p, lr=1e-2)

    def sched(o):
        return torch.optim.lr_scheduler.ExponentialLR(o, 0.8)

    return _build(MLP, 0, width=4, optimizer=opt, lr_scheduler=sched, **kw)


@pytest.mark.parametrize("members", [False, True], ids=["single", "members"])
def test_resume_after_widening_equals_uninterrupted(tmp_path, members):
    """4 steps per epoch, widening at step 6: the epoch-0 checkpoint is narrow, epoch 1's wide."""
    whole = _resume_model(members)
    cb = Widen(step=6, units=2)
    _trainer(tmp_path / "whole", epochs=4, callbacks=[cb], ckpt=True).fit(whole, _data())
    lr = whole.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(1e-2 * 0.8**4)  # the schedule carried over the widening
    final = {k: v.clone() for k, v in whole.state_dict().items()}
    for epoch in (0, 1):
        part = _resume_model(members)
        resumed = Widen(step=6, units=2)
        ckpt = tmp_path / "whole" / "ckpt" / f"epoch={epoch}.ckpt"
        _trainer(tmp_path / f"from{epoch}", epochs=4, callbacks=[resumed]).fit(part, _data(),
                                                                               ckpt_path=str(ckpt))
        got = part.state_dict()
        assert set(got) == set(final)
        for k, v in final.items():
            assert torch.equal(got[k], v), (epoch, k)
        assert part.width == 6 and part.num_params == whole.num_params
        assert part.member_rows() == whole.member_rows()
        assert resumed.record["members"] == cb.record["members"]


@pytest.mark.parametrize("members", [False, True], ids=["single", "members"])
def test_widened_checkpoint_loads_and_exports(tmp_path, members):
    """load_from_checkpoint grows the network to the checkpoint's shapes before loading it, and a
    member of a widened stack exports as a single model of the new width."""
    from overparam_lit.models.export import export_member

    model = _resume_model(members)
    trainer = _trainer(tmp_path, epochs=2, callbacks=[Widen(step=2, units=2)])
    trainer.fit(model, _data())
    trainer.save_checkpoint(tmp_path / "wide.ckpt")
    loaded = MLP.load_from_checkpoint(tmp_path / "wide.ckpt")
    assert loaded.width == model.width == 6 and loaded.num_params == model.num_params
    x = torch.randn(5, 1, 40)
    model.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))
    if members:
        single = MLP.load_from_checkpoint(export_member(tmp_path / "wide.ckpt", 1, tmp_path / "m1.ckpt"))
        assert single.width == 6
        torch.testing.assert_close(single(x), model(x)[1])


def test_cli_fit_and_resume_with_the_widen_fragment(tmp_path, monkeypatch):
    from overparam_lit.cli import main

    repo = Path(__file__).resolve().parents[3]
    monkeypatch.chdir(repo)
    # widths given explicitly: the CLI compares the config with the resolved lists in hparams
    common = ["-c", "configs/quickstart.yaml", "--model.width", "8", "--model.seeds", "[0, 1]",
              "--model.widths", "[8]",
              "--data.train_subset", "200", "--data.batch_size", "50",
              "-c", "callbacks/widen.yaml", "--trainer.callbacks.step", "6", "--wandb.mode", "disabled"]
    main(["fit", *common, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path / "a")])
    main(["fit", *common, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path / "b")])
    main(["fit", "-c", str(tmp_path / "b" / "config.yaml"), "--trainer.max_epochs", "3",
          "--ckpt_path", str(tmp_path / "b" / "checkpoints" / "last.ckpt")])
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a["net.1.weight"].shape == (2, 9, 40)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rec = json.loads((tmp_path / "b" / "widen" / "widen.json").read_text())
    assert (rec["step"], rec["width_after"]) == (6, 9)


# ---- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "match"), [
    ({"step": 3, "method": "noise"}, "unknown widening method"),
    ({"step": -1}, "step must be an integer >= 0"),
    ({}, "exactly one of step and epoch"),
    ({"step": 2, "epoch": 1}, "exactly one of step and epoch"),
    ({"step": 2, "units": 0}, "units must be an integer >= 1"),
    ({"step": 2, "unit": "smallest"}, "unknown unit choice"),
    ({"step": 2, "method": "zero", "nudge": 1e-3}, "split nudge separates duplicated units"),
    ({"step": 2, "nudge": -1.0}, "nudge must be a number >= 0"),
    ({"step": 2, "ratio": float("nan")}, "ratio must be a finite real number"),
])
def test_bad_arguments_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        Widen(**kw)


@pytest.mark.parametrize(("model", "cb", "match"), [
    (lambda: _build(MLP, 0, widths=[4, 8]), lambda: Widen(step=2), "members of one width only"),
    (lambda: _build(ResNet18, 0, width=2), lambda: Widen(step=2), "nn.Sequential"),
    (lambda: _build(LeNet300100, 0, width=30), lambda: Widen(step=2), "cannot grow in proportion"),
    (lambda: _build(MLP, 0, width=4), lambda: Widen(step=2, layer=2), "hidden layer index out of range"),
    (lambda: _build(MLP, 0, width=4), lambda: Widen(step=2, unit=7), "unit index out of range"),
    (lambda: _build(MLP, 0, width=4), lambda: Widen(step=99), "past the end of training"),
])
def test_bad_settings_refused_before_training(tmp_path, model, cb, match):
    m = model()
    trainer = _trainer(tmp_path, steps=8, callbacks=[cb()])
    with pytest.raises(ConfigError, match=match):
        trainer.fit(m, _data())
    assert trainer.global_step == 0


def test_widen_with_pruning_refused(tmp_path):
    trainer = _trainer(tmp_path, epochs=1, callbacks=[Widen(step=1), IterativeMagnitudePruning(levels=1)])
    with pytest.raises(ConfigError, match="pruning or ticket callback"):
        trainer.fit(_build(MLP, 0, width=4), _data())


def test_one_layer_and_epoch_schedule(tmp_path):
    """Widening one layer of a two-layer MLP after one epoch (4 steps): the net is no family member,
    so ``width`` stays and only the parameter count changes."""
    model = _build(MLP, 0, width=4, depth=2)
    cb = Widen(epoch=1, layer=1, units=3, unit=[0, 1, 0])
    _trainer(tmp_path, epochs=2, callbacks=[cb]).fit(model, _data())
    assert cb.record["step"] == 4 and cb.record["hidden_sizes_after"] == [4, 7]
    assert cb.record["units_chosen"] == [[], [0, 1, 0]]
    assert model.width == 4 and model.num_params == 40 * 4 + 4 + 4 * 7 + 7 + 7 * 10 + 10
    assert cb.record["loss_after"] == pytest.approx(cb.record["loss_before"], rel=1e-6)


# ---- a probe due at the widening step sees the wide network, wherever it sits in the list --------
@pytest.mark.parametrize("probe_first", [True, False], ids=["probe_before_widen", "probe_after_widen"])
def test_a_probe_due_at_the_widening_step_waits_for_the_wide_network(tmp_path, probe_first):
    """Widen changes the model at step 4 (ModelChanging); a HessianProbe scheduled at that step
    runs once, after the widening (requested through probe_once), whatever the callbacks' order."""
    model = _build(MLP, 0, width=4, depth=2)
    probe = HessianProbe(schedule="steps", every=4, probe_at_start=False, probe_size=64, k=1,
                         lanczos_iters=20, slq_runs=0, save_figure=False)
    widen = Widen(step=4, method="duplicate", units=2, probe_around=False, probe_size=None)
    after = Capture(4)
    cbs = [probe, widen, after] if probe_first else [widen, probe, after]
    _trainer(tmp_path, steps=6, callbacks=cbs).fit(model, _data())
    assert probe.probed_steps == [4]
    npz = np.load(tmp_path / "hessian" / "probe_step00000004.npz")
    wide = sum(p.numel() for p in after.net.parameters())
    narrow = sum(p.numel() for p in _build(MLP, 0, width=4, depth=2).net.parameters())
    assert wide > narrow
    assert int(npz["dim"]) == wide  # the probe spanned the wide network's parameters
    record = json.loads((tmp_path / "widen" / "widen.json").read_text())
    assert record["step"] == 4

"""IterativeMagnitudePruning and TicketStart callbacks on tiny CPU runs."""

from __future__ import annotations

import json
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from overparam_lit.callbacks.imp import IterativeMagnitudePruning
from overparam_lit.callbacks.ticket import TicketStart
from overparam_lit.models.base import OverparamModule
from overparam_lit.testing import small_mlp
from overparam_lit.utils import ConfigError


def _load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture
def fit(blobs, tiny_trainer):
    """``fit(root, cb, model=None, epochs=2, extra=(), **trainer_kw)``: seed 0, the small MLP (or
    ``model``) on the blobs in batches of 50, ``cb`` first; returns the trainer and the model."""

    def run(root, cb, model=None, epochs=2, extra=(), **kw):
        L.seed_everything(0)
        model = model if model is not None else small_mlp()
        tr = tiny_trainer(root, [cb, *extra], max_epochs=epochs, deterministic=True, **kw)
        tr.fit(model, blobs(batch_size=50))
        return tr, model

    return run


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_density_and_magnitude_rule_over_levels(tmp_path, scope, fit):
    cb = IterativeMagnitudePruning(levels=3, fraction=0.2, scope=scope, output_fraction=0.1)
    tr, model = fit(tmp_path, cb)
    assert tr.current_epoch == 8  # 4 levels x 2 epochs, set by the callback
    imp = tmp_path / "imp"
    summary = json.loads((imp / "summary.json").read_text())
    assert [lv["level"] for lv in summary["levels"]] == [0, 1, 2, 3]
    hidden = ["net.1.weight", "net.3.weight"]
    numel = {"net.1.weight": 16 * 8, "net.3.weight": 16 * 16, "net.5.weight": 4 * 16}
    for level in range(1, 4):
        m = _load(imp / f"level_{level:02d}" / "mask.pt")
        prev = _load(imp / f"level_{level - 1:02d}" / "mask.pt")
        final_prev = _load(imp / f"level_{level - 1:02d}" / "final.pt")
        # output layer at its own rate, within one weight
        assert int(m["net.5.weight"].sum()) == round(64 * 0.9**level)
        if scope == "layerwise":
            for n in hidden:
                assert int(m[n].sum()) == round(numel[n] * 0.8**level)
        else:
            assert sum(int(m[n].sum()) for n in hidden) == round(384 * 0.8**level)
        # independent rule: survivors are the largest |w| at the end of the previous level
        pools = [hidden] if scope == "global" else [[n] for n in hidden]
        for pool in pools:
            a = np.concatenate([final_prev[n].abs().numpy().ravel() for n in pool])
            alive = np.concatenate([prev[n].numpy().ravel() for n in pool])
            got = np.concatenate([m[n].numpy().ravel() for n in pool])
            assert not (got & ~alive).any()
            assert a[got].min() >= a[alive & ~got].max()
        lv = summary["levels"][level]
        assert lv["density"] == pytest.approx(sum(int(v.sum()) for v in m.values()) / 448)
        for f in ("rewind.pt", "final.pt", "sparsity.json", "metrics.json"):
            assert (imp / f"level_{level:02d}" / f).is_file()
        assert 0.0 <= lv["test/acc"] <= 1.0
    # the trained model's pruned weights are exactly zero
    params = dict(model.named_parameters())
    for n, mk in _load(imp / "level_03" / "mask.pt").items():
        assert (params[n][~mk] == 0).all()


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_pruned_weights_stay_zero_with_momentum_and_decay(tmp_path, opt, fit):
    if opt == "sgd":
        factory = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-2)
    else:
        factory = partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    cb = IterativeMagnitudePruning(levels=2, fraction=0.5, epochs_per_level=1)
    tr, model = fit(tmp_path, cb, model=small_mlp(optimizer=factory))
    params = dict(model.named_parameters())
    opt_ = tr.optimizers[0]
    assert cb.level == 2
    for n, m in cb.masks.items():
        p = params[n]
        assert int((~m).sum()) > 0
        assert (p[~m] == 0).all(), n
        for v in opt_.state[p].values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert (v[~m] == 0).all()
        assert (p[m] != 0).all()


class _Spy(L.Callback):
    """Records the state at a global step and at the start of each epoch (after IMP's hooks)."""

    def __init__(self, step: int) -> None:
        self.step, self.at_step, self.epoch_start, self.opt_ids = step, None, {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and self.at_step is None:
            self.at_step = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start[trainer.current_epoch] = {k: v.detach().clone()
                                                   for k, v in pl_module.state_dict().items()}
        self.opt_ids[trainer.current_epoch] = (id(trainer.optimizers[0]),
                                               len(trainer.optimizers[0].state),
                                               trainer.optimizers[0].param_groups[0]["lr"])


def test_weight_rewind_bit_for_bit(tmp_path, fit):
    cb = IterativeMagnitudePruning(levels=2, fraction=0.3, epochs_per_level=2, rewind_step=3)
    spy = _Spy(step=3)
    fit(tmp_path, cb, extra=[spy])
    snap = _load(tmp_path / "imp" / "level_01" / "rewind.pt")
    for k, v in spy.at_step.items():
        assert torch.equal(snap[k], v)
    for level, epoch in ((1, 2), (2, 4)):
        mask = _load(tmp_path / "imp" / f"level_{level:02d}" / "mask.pt")
        start = spy.epoch_start[epoch]
        for k, v in spy.at_step.items():
            expect = v * mask[k] if k in mask else v
            assert torch.equal(start[k], expect), k
        # fresh optimizer: new object, empty state
        assert spy.opt_ids[epoch][1] == 0 and spy.opt_ids[epoch][0] != spy.opt_ids[epoch - 1][0]


def test_lr_rewind_and_finetune(tmp_path, fit):
    sched = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    opt = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    for mode in ("lr", "finetune"):
        cb = IterativeMagnitudePruning(levels=1, fraction=0.5, epochs_per_level=2, rewind=mode)
        spy = _Spy(step=-1)
        fit(tmp_path / mode, cb, model=small_mlp(optimizer=opt, lr_scheduler=sched), extra=[spy])
        final0 = _load(tmp_path / mode / "imp" / "level_00" / "final.pt")
        mask = _load(tmp_path / mode / "imp" / "level_01" / "mask.pt")
        for k, v in final0.items():
            assert torch.equal(spy.epoch_start[2][k], v * mask[k] if k in mask else v)
        lrs = [spy.opt_ids[e][2] for e in range(4)]
        if mode == "lr":
            assert lrs == [0.1, 0.05, 0.1, 0.05]  # schedule replayed with a fresh optimizer
        else:
            assert lrs == [0.1, 0.05, 0.025, 0.025]  # final learning rate kept, no scheduler
            assert spy.opt_ids[2][1] > 0  # optimizer (momentum) kept


class _NoLinear(OverparamModule):
    def build_network(self):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(8))


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 0.0}, "fraction"), ({"fraction": 1.0}, "fraction"), ({"fraction": -0.2}, "fraction"),
    ({"levels": 0}, "levels"), ({"scope": "local"}, "scope"), ({"rewind": "init"}, "rewind"),
    ({"granularity": "blocks"}, "granularity"), ({"rewind": "lr", "rewind_step": 5}, "rewind_step"),
])
def test_bad_arguments_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        IterativeMagnitudePruning(**kwargs)


class _StepCounter(L.Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, *args):
        self.steps += 1


def test_bad_setups_refused_before_training(tmp_path, fit):
    counter = _StepCounter()
    cb = IterativeMagnitudePruning(levels=1, epochs_per_level=1, rewind_step=5)  # a level has 4 steps
    with pytest.raises(ConfigError, match="rewind_step is past the end"):
        fit(tmp_path / "a", cb, extra=[counter])
    model = _NoLinear(input_shape=(8,), num_classes=4)
    with pytest.raises(ConfigError, match="no prunable weights"):
        fit(tmp_path / "b", IterativeMagnitudePruning(levels=1), model=model, extra=[counter])
    with pytest.raises(ConfigError, match="levels are set in epochs, but trainer.max_steps is set"):
        fit(tmp_path / "c", IterativeMagnitudePruning(levels=1, epochs_per_level=1), extra=[counter],
            max_steps=3)
    assert counter.steps == 0


class _Kill(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


@pytest.mark.parametrize("kill_at", [10, 13])
def test_kill_and_resume_equals_uninterrupted(tmp_path, kill_at, blobs, tiny_trainer):
    """A level is 2 epochs of 4 steps. Kill at step 10: the last checkpoint is the end of level 0,
    before level 1's pruning; kill at step 13: the last checkpoint is mid-level 1 (masks live)."""
    opt = partial(torch.optim.SGD, lr=0.1, momentum=0.9)

    def run(root, extra, ckpt=None):
        L.seed_everything(0)
        cb = IterativeMagnitudePruning(levels=2, fraction=0.4, rewind_step=2, output_fraction=0.2)
        mc = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
        tr = tiny_trainer(root, [cb, mc, *extra], max_epochs=2, deterministic=True, enable_checkpointing=True)
        model = small_mlp(optimizer=opt)
        tr.fit(model, blobs(batch_size=50), ckpt_path=ckpt)
        return cb, model

    cb_a, model_a = run(tmp_path / "a", [])
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "b", [_Kill(kill_at)])
    ckpt = torch.load(tmp_path / "b" / "ckpt" / "last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if "IterativeMagnitudePruning" in k)
    assert (ckpt["epoch"], state["level"]) == ({10: 1, 13: 2}[kill_at], {10: 0, 13: 1}[kill_at])
    cb_b, model_b = run(tmp_path / "b", [], ckpt=tmp_path / "b" / "ckpt" / "last.ckpt")
    for n in cb_a.masks:
        assert torch.equal(cb_a.masks[n], cb_b.masks[n])
    for (k, va), (_, vb) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k
    sa = json.loads((tmp_path / "a" / "imp" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "imp" / "summary.json").read_text())
    assert sa["levels"] == sb["levels"] and len(sa["levels"]) == 3
    for lv in range(3):
        ma = _load(tmp_path / "a" / "imp" / f"level_{lv:02d}" / "mask.pt")
        mb = _load(tmp_path / "b" / "imp" / f"level_{lv:02d}" / "mask.pt")
        assert all(torch.equal(ma[n], mb[n]) for n in ma)


def test_structured_fit_and_export(tmp_path, fit):
    cb = IterativeMagnitudePruning(levels=2, fraction=0.5, epochs_per_level=1, granularity="structured",
                                   scope="layerwise")
    tr, model = fit(tmp_path, cb)
    rep = json.loads((tmp_path / "imp" / "level_02" / "sparsity.json").read_text())
    assert rep["channels"] == {"net.1": {"channels": 16, "kept": 4}, "net.3": {"channels": 16, "kept": 4}}
    w1 = model.net[1].weight
    dead = (w1 == 0).all(dim=1)
    assert int(dead.sum()) == 12 and (model.net[1].bias[dead] == 0).all()
    assert (model.net[3].weight[:, dead] == 0).all()
    small = torch.load(tmp_path / "imp" / "level_02" / "pruned_net.pt", weights_only=False)
    assert small[1].out_features == 4 and small[3].in_features == 4 and small[3].out_features == 4
    x = torch.randn(10, 8)
    model.eval()
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["ticket", "random_reinit", "random_mask", "perturb_rest"])
def test_ticket_start_fit(tmp_path, mode, fit):
    if not (tmp_path.parent / "ticket_src" / "imp" / "level_02").is_dir():
        fit(tmp_path.parent / "ticket_src",
             IterativeMagnitudePruning(levels=2, fraction=0.5, epochs_per_level=1))
    level = tmp_path.parent / "ticket_src" / "imp" / "level_02"
    mask = _load(level / "mask.pt")
    cb = TicketStart(ticket=str(level), mode=mode, seed=1)
    _, model = fit(tmp_path, cb, epochs=1)
    res = json.loads((tmp_path / "imp" / "ticket_result.json").read_text())
    params = dict(model.named_parameters())
    if mode == "perturb_rest":
        assert res["density"] == 1.0
        assert (params["net.1.weight"][~mask["net.1.weight"]] != 0).all()
    else:
        assert res["density"] == pytest.approx(0.25)
        for n, m in cb.masks.items():
            assert (params[n][~m] == 0).all() and int(m.sum()) == int(mask[n].sum())
        assert all(torch.equal(cb.masks[n], mask[n]) for n in mask) == (mode != "random_mask")
    wrong = small_mlp(width=12)
    with pytest.raises(ConfigError, match="ticket"):
        fit(tmp_path / "wrong", TicketStart(ticket=str(level)), model=wrong)


@pytest.mark.parametrize(("kw", "densities"), [
    ({"levels": 3, "schedule": "linear", "final_density": 0.4}, [1.0, 0.8, 0.6, 0.4]),
    ({"schedule": "list", "densities": [0.5, 0.3]}, [1.0, 0.5, 0.3]),
])
def test_linear_and_listed_schedules(tmp_path, fit, kw, densities):
    cb = IterativeMagnitudePruning(epochs_per_level=1, **kw)
    fit(tmp_path, cb)
    summary = json.loads((tmp_path / "imp" / "summary.json").read_text())
    total = 16 * 8 + 16 * 16  # the hidden layers' weights (the output layer stays dense)
    assert [lv["kept"] for lv in summary["levels"]] == [round(total * d) for d in densities]
    assert summary["config"]["densities"] == pytest.approx(densities)


def test_biases_pruned_with_the_weights(tmp_path, fit):
    cb = IterativeMagnitudePruning(levels=1, fraction=0.5, epochs_per_level=1, prune_biases=True)
    _, model = fit(tmp_path, cb)
    mask = _load(tmp_path / "imp" / "level_01" / "mask.pt")
    assert sorted(mask) == ["net.1.bias", "net.1.weight", "net.3.bias", "net.3.weight"]
    pool = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(pool * 0.5)
    # the largest magnitudes of weights and biases together survive (one global threshold)
    final = _load(tmp_path / "imp" / "level_00" / "final.pt")
    mags = torch.cat([final[n].abs().flatten() for n in mask])
    kept = torch.cat([mask[n].flatten() for n in mask])
    assert float(mags[kept].min()) >= float(mags[~kept].max())
    params = dict(model.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in mask.items())


def test_best_accuracy_of_each_level_is_recorded(tmp_path, fit):
    from lightning.pytorch.loggers import CSVLogger

    cb = IterativeMagnitudePruning(levels=2, fraction=0.5, epochs_per_level=3)
    fit(tmp_path, cb, logger=CSVLogger(str(tmp_path), name="", version=""), log_every_n_steps=1)
    summary = json.loads((tmp_path / "imp" / "summary.json").read_text())
    import csv

    with open(tmp_path / "metrics.csv") as fh:
        vals = [(int(r["epoch"]), float(r["val/acc"])) for r in csv.DictReader(fh) if r.get("val/acc")]
    for lv in summary["levels"]:
        own = [a for e, a in vals if lv["level"] * 3 <= e < (lv["level"] + 1) * 3]
        assert len(own) == 3 and lv["best_val/acc"] == pytest.approx(max(own), abs=1e-6)
        assert lv["val/acc"] == pytest.approx(own[-1], abs=1e-6)  # the final evaluation is the last

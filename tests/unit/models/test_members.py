"""Members: a stacked fit of seeds and widths equals the separate single fits it stands for."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from tolerances import adam_zero_grad_tol, tol

from overparam_lit.callbacks.imp import IterativeMagnitudePruning
from overparam_lit.callbacks.regions import DecisionRegions
from overparam_lit.data import MNIST1D
from overparam_lit.models import CNN, MLP, LeNet300100, ResNet18
from overparam_lit.models.export import export_member
from overparam_lit.regions import PlaneBank, fragmentation, label_maps, load_label_maps
from overparam_lit.testing import tiny_trainer
from overparam_lit.utils import ConfigError

HERE = Path(__file__).resolve().parents[2]  # tests/
# The fits below: MNIST-1D inputs of length 40, batches of 50 out of 200 samples (4 steps an epoch).
# A conv or BatchNorm reduction sums over batch x positions, the largest sums in these nets.
N_TERMS, STEPS_PER_EPOCH = 50 * 40, 4


def _data(**kw) -> MNIST1D:
    return MNIST1D(batch_size=50, train_subset=200, eval_batch_size=500, **kw)


def _fit(model: L.LightningModule, root: Path, seed: int, steps: int | None = None, epochs: int = 2,
         precision: str = "32-true", callbacks: list | None = None) -> L.Trainer:
    L.seed_everything(seed, verbose=False)
    trainer = tiny_trainer(root, callbacks or [], max_epochs=epochs, max_steps=steps or -1,
                           logger=CSVLogger(str(root), name="", version=""), precision=precision,
                           log_every_n_steps=1)
    trainer.fit(model, _data())
    return trainer


def _build(cls, seed: int, **kw):
    L.seed_everything(seed, verbose=False)
    return cls(input_shape=(1, 40), **kw)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _last(rows: list[dict[str, str]], key: str, **match) -> float:
    vals = [float(r[key]) for r in rows if r.get(key) and all(str(r[k]) == str(v) for k, v in match.items())]
    return vals[-1]


def _crop(stacked: torch.Tensor, i: int, shape: torch.Size) -> torch.Tensor:
    return stacked[i][tuple(slice(0, s) for s in shape)]


def _compare(stack, single, i: int, rel: float) -> float:
    """Largest difference between member ``i`` and the single fit over all parameters and buffers,
    checked against ``rel`` times the parameter scale (their largest magnitude, about 1 here)."""
    mine = dict(single.named_parameters()) | dict(single.named_buffers())
    err, scale = 0.0, 0.0
    for name, t in list(stack.named_parameters()) + list(stack.named_buffers()):
        if name in mine and name.startswith("net."):
            err = max(err, float((_crop(t.detach(), i, mine[name].shape).double()
                                  - mine[name].detach().double()).abs().max()))
            if t.is_floating_point():
                scale = max(scale, float(mine[name].detach().abs().max()))
    assert err <= rel * scale, (err, rel * scale)
    return err


# float32, 8 steps (SGD with momentum, or Adam): the stack and the single fit sum the same terms in
# another order, so a gradient differs by about eps32 * sqrt(N_TERMS) of its size (5e-6 with c=10);
# SGD passes that on at lr times, Adam at most as a relative error of its lr-sized steps. Measured
# up to 2e-6 of the parameter scale (ResNet18, Adam) under AVX-512 and AVX2 kernels and 1 or 2
# threads: 30x margin. A real divergence is at least one Adam step (lr = 1e-3, 17x above it) and
# a member with another seed is off by O(1).
SEED_MEMBERS_REL = tol(torch.float32, N_TERMS)
# float64 with Adam through a BatchNorm CNN: see adam_zero_grad_tol. A conv bias before BatchNorm
# has a gradient that is zero in exact arithmetic; its computed value is rounding residue (measured
# 1e-16 to 3e-15, bound 1e-13) that Adam turns into steps 1e5 times larger (lr / adam_eps) while it
# is far below adam_eps, so stack and single drift apart by up to steps * 1e5 * 1e-13 of the
# parameter scale (1.2e-7 after 12 steps). Every other parameter agrees to ~1e-15. Measured drift
# 2e-10 to 1e-9 here (AVX-512 and AVX2, 1 or 2 threads) and 3.5e-9 on an AMD EPYC: >= 30x margin;
# a member trained with another seed is off by 0.94 (8e6 times the tolerance).
ADAM_BN_REL = adam_zero_grad_tol(torch.float64, N_TERMS, steps=3 * STEPS_PER_EPOCH)


CASES = [
    (MLP, {"width": 16}, "32-true", None),
    (CNN, {"width": 3}, "32-true", torch.optim.SGD),  # Adam: see test_cnn_adam_float64
    (ResNet18, {"width": 2}, "32-true", None),
]


@pytest.mark.numeric
@pytest.mark.parametrize(("cls", "kw", "precision", "opt"), CASES, ids=["mlp", "cnn_bn", "resnet18"])
def test_seed_members_equal_single_fits(tmp_path, cls, kw, precision, opt):
    extra = {} if opt is None else {"optimizer": lambda p: opt(p, lr=0.05, momentum=0.9)}
    stack = _build(cls, 5, seeds=[0, 2], **kw, **extra)
    _fit(stack, tmp_path / "stack", seed=5, precision=precision)
    members = _rows(tmp_path / "stack" / "members.csv")
    assert {r["seed"] for r in members} == {"0", "2"} and len(members) == 4  # 2 members x 2 epochs
    for i, seed in enumerate([0, 2]):
        single = _build(cls, seed, **kw, **extra)
        _fit(single, tmp_path / f"single{seed}", seed=seed, precision=precision)
        _compare(stack, single, i, SEED_MEMBERS_REL)
        logged = _rows(tmp_path / f"single{seed}" / "metrics.csv")
        for key in ("train/loss", "val/loss", "val/acc", "train/acc"):
            # float32 epoch means over <= 200 samples of values <= 2.3: rounding ~tol(float32, 200,
            # 2.3) = 4e-5 at worst, measured 3e-7; an accuracy only moves in steps of 1/200
            assert _last(members, key, member=i) == pytest.approx(_last(logged, key), abs=1e-5), key


@pytest.mark.numeric
def test_regression_members_equal_single_fits(tmp_path):
    """Teacher-student regression (MSE): the stacked loss is each member's own mean squared error."""
    from overparam_lit.data import TeacherStudent

    def fit(model, root, seed):
        L.seed_everything(seed, verbose=False)
        trainer = L.Trainer(default_root_dir=str(root), max_epochs=3, accelerator="cpu", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0)
        trainer.fit(model, data())

    def data():
        return TeacherStudent(input_dim=2, teacher_width=4, n_train=256, n_test=64, batch_size=64)

    def build(seed, **kw):
        L.seed_everything(seed, verbose=False)
        return MLP(width=5, depth=1, input_shape=(2,), num_classes=1, task="regression", **kw)

    stack = build(0, seeds=[0, 3])
    fit(stack, tmp_path / "stack", 0)
    rows = _rows(tmp_path / "stack" / "members.csv")
    for i, seed in enumerate([0, 3]):
        single = build(seed)
        fit(single, tmp_path / f"s{seed}", seed)
        _compare(stack, single, i, SEED_MEMBERS_REL)  # float32, 12 steps of Adam: as above
        dm = data()
        dm.setup()
        x, _, y = dm.splits["val"]
        with torch.no_grad():
            own = float(torch.nn.functional.mse_loss(single.eval()(x), y))
        # float32 mean of 64 squared errors, computed in another order: tol(float32, 64) = 1e-5
        assert _last(rows, "val/loss", member=i) == pytest.approx(own, rel=tol(torch.float32, 64))


@pytest.mark.numeric
def test_cnn_adam_float64(tmp_path):
    """Adam turns float32 noise in gradients that are exactly zero (conv biases before BatchNorm)
    into steps of size lr, so BatchNorm nets with Adam are compared in float64."""
    stack = _build(CNN, 0, width=2, seeds=2)
    _fit(stack, tmp_path / "s", seed=0, precision="64-true", epochs=3)
    single = _build(CNN, 1, width=2)
    _fit(single, tmp_path / "1", seed=1, precision="64-true", epochs=3)
    _compare(stack, single, 1, ADAM_BN_REL)


@pytest.mark.numeric
@pytest.mark.parametrize("cls", [MLP, CNN], ids=["mlp", "cnn_bn"])
def test_width_members_equal_standalone_fits(tmp_path, cls):
    widths = [2, 3, 5] if cls is CNN else [4, 8, 16]
    stack = _build(cls, 3, widths=widths, seeds=[3])
    assert stack.width == max(widths) and [r["width"] for r in stack.member_rows()] == widths
    _fit(stack, tmp_path / "stack", seed=3, precision="64-true", epochs=3)
    members = _rows(tmp_path / "stack" / "members.csv")
    for i, k in enumerate(widths):
        single = _build(cls, 3, width=k)
        assert stack.member_num_params[i] == single.num_params
        _fit(single, tmp_path / f"w{k}", seed=3, precision="64-true", epochs=3)
        _compare(stack, single, i, ADAM_BN_REL)  # the Adam, BatchNorm, float64 case: see ADAM_BN_REL
        # the padding stays exactly zero
        for name, mask in stack.net.structure.items():
            assert not dict(stack.net.named_parameters())[name][i][~mask[i]].any()
        logged = _rows(tmp_path / f"w{k}" / "metrics.csv")
        # an accuracy is a count over 500 samples (steps of 2e-3): abs 1e-6 only absorbs its float32 storage
        assert _last(members, "val/acc", member=i) == pytest.approx(_last(logged, "val/acc"), abs=1e-6)


def test_imp_masks_per_member_equal_single_imp(tmp_path):
    def imp():
        return IterativeMagnitudePruning(levels=2, fraction=0.5, epochs_per_level=1, output_fraction=0.2)

    stack = _build(MLP, 0, width=16, seeds=[0, 1])
    _fit(stack, tmp_path / "stack", seed=0, callbacks=[imp()], epochs=1)
    masks = torch.load(tmp_path / "stack/imp/level_02/mask.pt", weights_only=True)
    import json

    summary = json.loads((tmp_path / "stack/imp/summary.json").read_text())
    assert [len(lv["members"]) for lv in summary["levels"]] == [2, 2, 2]
    for i in range(2):
        single = _build(MLP, i, width=16)
        _fit(single, tmp_path / f"s{i}", seed=i, callbacks=[imp()], epochs=1)
        own = torch.load(tmp_path / f"s{i}/imp/level_02/mask.pt", weights_only=True)
        for name, m in own.items():
            assert torch.equal(masks[name][i], m), name
        single_summary = json.loads((tmp_path / f"s{i}/imp/summary.json").read_text())
        for lv, lv1 in zip(summary["levels"], single_summary["levels"], strict=True):
            assert lv["members"][i]["density"] == pytest.approx(lv1["density"])
            assert lv["members"][i]["val/acc"] == pytest.approx(lv1["val/acc"], abs=1e-6)


def test_imp_on_padded_widths_counts_own_entries(tmp_path):
    stack = _build(MLP, 0, widths=[4, 16], seeds=[0])
    cb = IterativeMagnitudePruning(levels=1, fraction=0.5, epochs_per_level=1, scope="layerwise")
    _fit(stack, tmp_path, seed=0, callbacks=[cb], epochs=1, precision="64-true")
    masks = torch.load(tmp_path / "imp/level_01/mask.pt", weights_only=True)
    struct = stack.net.structure
    for name, m in masks.items():
        own = struct[name[len("net."):]] if name[len("net."):] in struct else torch.ones_like(m)
        assert not (m & ~own).any()  # never keeps padding
        for i in range(2):
            assert int(m[i].sum()) == round(int(own[i].sum()) * 0.5)


@pytest.mark.numeric
@pytest.mark.parametrize("layout", ["seeds", "widths"])
def test_member_hessian_spectra_equal_single_probes(tmp_path, layout):
    """One block-diagonal product per Lanczos step gives each member its own spectrum."""
    from overparam_lit.callbacks.hessian import HessianProbe

    def probe():
        return HessianProbe(schedule="epochs", every=1, probe_at_start=False, probe_size=100, k=3,
                            lanczos_iters=80, tol=1e-7, slq_runs=2, slq_iters=20, save_figure=False)

    kw = {"seeds": [0, 1], "width": 6} if layout == "seeds" else {"seeds": [2], "widths": [3, 6]}
    stack = _build(MLP, 2, **kw)
    _fit(stack, tmp_path / "stack", seed=2, callbacks=[probe()], epochs=1)
    got = dict(np.load(next((tmp_path / "stack/hessian").glob("probe_step*.npz"))))
    assert got["top"].shape == (2, 3)
    assert got["member_width"].tolist() == [r["width"] for r in stack.member_rows()]
    for i, row in enumerate(stack.member_rows()):
        single = _build(MLP, row["seed"], width=row["width"])
        _fit(single, tmp_path / f"s{i}", seed=row["seed"], callbacks=[probe()], epochs=1)
        own = dict(np.load(next((tmp_path / f"s{i}/hessian").glob("probe_step*.npz"))))
        assert int(got["dim"][i]) == int(own["dim"]) == single.num_params
        # float32 Hessian-vector products over 100 samples in another order, 80 Lanczos steps:
        # Ritz values of a symmetric operator move by ~eps32 * sqrt(n) relative (measured 1e-7),
        # rtol 1e-4 leaves 1000x; a wrong member's block differs by O(1)
        np.testing.assert_allclose(got["top"][i], own["top"], rtol=1e-4)
        np.testing.assert_allclose(got["bottom"][i], own["bottom"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["trace"][i], own["trace"], rtol=1e-4)
        np.testing.assert_allclose(got["loss"][i], own["loss"], rtol=1e-5)
        x, y, _ = _data().probe_set(100, "train", 0)
        with torch.no_grad():
            assert float(own["loss"]) == pytest.approx(float(single.loss(single.eval()(x), y)), rel=1e-5)


def test_member_fragmentation_equals_single_snapshots(tmp_path):
    cb = DecisionRegions(num_planes=2, resolution=12, epochs=[1], render_planes=0)
    stack = _build(MLP, 0, width=16, seeds=[0, 1])
    _fit(stack, tmp_path / "stack", seed=0, callbacks=[cb], epochs=1)
    bank = PlaneBank.load(tmp_path / "stack/regions/bank.pt")
    saved = load_label_maps(str(tmp_path / "stack/regions/maps_epoch0001.npz"))
    assert saved.pred.shape == (2, 2, 12, 12)
    import json

    hist = json.loads((tmp_path / "stack/regions/history.json").read_text())["snapshots"][-1]
    for i in range(2):
        single = _build(MLP, i, width=16)
        _fit(single, tmp_path / f"s{i}", seed=i, epochs=1)
        own = label_maps(single, bank)
        assert (own.pred == saved.pred[i]).all()
        assert hist["members"][i]["regions/fragmentation"] == pytest.approx(
            fragmentation(own.pred, 10).mean_normalised)


@pytest.mark.numeric
def test_export_round_trip(tmp_path):
    stack = _build(CNN, 0, widths=[2, 3], seeds=[0, 1])
    trainer = _fit(stack, tmp_path, seed=0, epochs=1)
    ckpt = tmp_path / "stack.ckpt"
    trainer.save_checkpoint(ckpt)
    members = _rows(tmp_path / "members.csv")
    dm = _data()
    dm.setup()
    x, _, y = dm.splits["val"]
    stack.eval()
    with torch.no_grad():
        outs = stack(x)
    for i in range(4):
        path = export_member(ckpt, i, tmp_path / f"m{i}.ckpt")
        single = CNN.load_from_checkpoint(path)
        assert single.members is None and single.width == stack.members[i].width
        single.eval()
        with torch.no_grad():
            out = single(x)
        # float32 outputs of the stacked and the exported CNN (other kernels, another summation
        # order over <= 8k * 3 terms): tol(float32, 100) ~ 1e-5 of outputs of size ~1, measured 6e-8
        torch.testing.assert_close(out, outs[i], rtol=1e-5, atol=1e-5)
        acc = float((out.argmax(1) == y).float().mean())
        assert acc == pytest.approx(_last(members, "val/acc", member=i), abs=1e-6)
    with pytest.raises(ConfigError, match="out of range"):
        export_member(ckpt, 4, tmp_path / "x.ckpt")


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    """A stacked fit killed with SIGKILL after its second checkpoint resumes to the same weights."""
    script = HERE / "members_kill.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([sys.executable, str(script), str(tmp_path / "whole"), "4"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "part"), "4", "--kill-after", "2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "part"), "4", "--resume"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "whole/final.pt", weights_only=True)
    b = torch.load(tmp_path / "part/final.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a, rows_b = _rows(tmp_path / "whole/members.csv"), _rows(tmp_path / "part/members.csv")
    assert [(r["member"], r["epoch"]) for r in rows_b] == [(r["member"], r["epoch"]) for r in rows_a]
    assert [r["val/acc"] for r in rows_b] == [r["val/acc"] for r in rows_a]


@pytest.mark.ddp
def test_members_under_two_process_ddp(tmp_path, run_ddp):
    run_ddp("members_ddp.py", tmp_path, timeout=300)  # fails the test unless the script exits 0
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # ranks hold one stack
    members = _rows(tmp_path / "members.csv")
    assert len(members) == 2 * 2  # written once (rank 0), 2 members x 2 epochs
    dm = MNIST1D(batch_size=50, train_subset=200)
    dm.setup()
    x, _, y = dm.splits["val"]
    for i in range(2):
        single = MLP.load_from_checkpoint(export_member(tmp_path / "last.ckpt", i, tmp_path / f"m{i}.ckpt"))
        single.eval()
        with torch.no_grad():
            acc = float((single(x).argmax(1) == y).float().mean())
        assert acc == pytest.approx(_last(members, "val/acc", member=i), abs=1e-6)


@pytest.mark.parametrize(("kw", "match"), [
    ({"seeds": 0}, "positive number of seeds"),
    ({"seeds": [1, 1]}, "repeats seeds"),
    ({"seeds": []}, "empty list"),
    ({"seeds": [-1]}, "non-negative"),
    ({"widths": [4, 0]}, "positive integer"),
    ({"widths": []}, "empty list"),
    ({"widths": [8, 8]}, "repeats widths"),
    ({"width": 100_000, "depth": 3, "seeds": 64}, "does not fit in memory"),
    ({"width": 10**12}, "does not fit in memory"),
])
def test_bad_members_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        MLP(input_shape=(1, 40), **kw)


def test_lenet_widths_below_three_refused():
    with pytest.raises(ConfigError, match=">= 3"):
        LeNet300100(input_shape=(1, 28, 28), widths=[2, 300])


def test_padding_that_changes_the_function_is_refused():
    from torch import nn

    from overparam_lit.models import OverparamModule

    class Normed(OverparamModule):
        def build_network(self):
            return nn.Sequential(nn.Flatten(), nn.Linear(40, self.width), nn.LayerNorm(self.width),
                                 nn.Linear(self.width, self.num_classes))

    Normed(input_shape=(1, 40), seeds=2, width=8)  # equal widths stack fine
    with pytest.raises(ConfigError, match="does not reproduce its own network"):
        Normed(input_shape=(1, 40), widths=[4, 8])


def test_members_table_in_wandb_matches_members_csv(tmp_path, monkeypatch):
    """The offline W&B run holds a members/final table whose rows are members.csv's final values."""
    import json as _json

    from overparam_lit.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    main(["fit", "--model", "MLP", "--model.width", "8", "--model.seeds", "[0, 3]", "--data", "MNIST1D",
          "--data.train_subset", "200", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run),
          "--test_after_fit", "false"])
    tables = list(run.glob("wandb/offline-run-*/files/media/table/members/final_*.table.json"))
    assert len(tables) == 1
    table = _json.loads(tables[0].read_text())
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    members = _rows(run / "members.csv")
    assert [int(r["seed"]) for r in rows] == [0, 3]
    for i, row in enumerate(rows):
        assert row["val/acc"] == pytest.approx(_last(members, "val/acc", member=i))
        assert row["train/loss"] == pytest.approx(_last(members, "train/loss", member=i))


def test_cli_resumes_a_members_fit_on_teacher_student_data(tmp_path):
    """The CLI compares a checkpoint with the model as built: resolved seeds and data-linked
    values (here a 2-D TeacherStudent input) do not block a resume, and members.csv continues."""
    from overparam_lit.cli import main

    run = tmp_path / "run"
    common = ["--model", "MLP", "--model.width", "4", "--model.depth", "1", "--model.seeds", "3",
              "--data", "TeacherStudent", "--data.input_dim", "2", "--data.n_train", "200",
              "--data.n_test", "50", "--data.batch_size", "50", "--trainer.default_root_dir", str(run),
              "--wandb.mode", "disabled", "--test_after_fit", "false"]
    main(["fit", *common, "--trainer.max_epochs", "2"])
    main(["fit", *common, "--trainer.max_epochs", "4", "--ckpt_path", "last"])
    rows = _rows(run / "members.csv")
    assert [(int(r["member"]), int(r["epoch"])) for r in rows] == [(m, e) for e in range(4) for m in range(3)]
    with pytest.raises(SystemExit) as err:  # other seeds are another model: refused, not resumed
        main(["fit", *common[:6], "--model.seeds", "2", *common[8:], "--trainer.max_epochs", "5",
              "--ckpt_path", "last"])
    assert err.value.code == 2


def test_testing_a_members_checkpoint_reports_its_training(tmp_path):
    """``overparam-lit test`` of a members checkpoint adds test rows at the checkpoint's epoch and
    step, with each member's own test accuracy."""
    from overparam_lit.cli import main

    run = tmp_path / "run"
    main(["fit", "--model", "MLP", "--model.width", "8", "--model.seeds", "2", "--data", "MNIST1D",
          "--data.train_subset", "200", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run),
          "--wandb.mode", "disabled", "--test_after_fit", "false"])
    main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    rows = [r for r in _rows(run / "members.csv") if r.get("test/acc")]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert [(r["member"], r["epoch"], r["step"]) for r in rows] == [
        (str(i), str(ckpt["epoch"]), str(ckpt["global_step"])) for i in range(2)]
    dm = MNIST1D(batch_size=50, train_subset=200)
    dm.setup()
    x, _, y = dm.splits["test"]
    for i in range(2):
        path = export_member(run / "checkpoints" / "last.ckpt", i, tmp_path / f"{i}.ckpt")
        single = MLP.load_from_checkpoint(path)
        with torch.no_grad():
            acc = float((single.eval()(x).argmax(1) == y).float().mean())
        assert float(rows[i]["test/acc"]) == pytest.approx(acc, abs=1e-6)

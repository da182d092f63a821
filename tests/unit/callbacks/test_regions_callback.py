"""DecisionRegions in real (tiny) training runs: logs, artifacts, resume, shared banks, DDP."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from overparam_lit.callbacks.regions import DecisionRegions
from overparam_lit.models import MLP
from overparam_lit.regions import (
    PlaneBank,
    agreement,
    fragmentation,
    label_maps,
    load_label_maps,
    make_plane_bank,
)
from overparam_lit.testing import THREE_BLOBS
from overparam_lit.utils import ConfigError


@pytest.fixture
def fit(blobs, tiny_trainer):
    """``fit(root, cb, epochs, ckpt=None, **trainer_kw)``: a width-16 MLP on the blobs (batches of
    40, label noise 0.2) with a CSV logger and checkpoints; returns the trainer and the model."""

    def run(root: Path, cb: DecisionRegions, epochs: int, ckpt: str | None = None, **trainer_kw):
        L.seed_everything(0, verbose=False)
        model = MLP(width=16, input_shape=(1, 8), num_classes=3)
        logger = CSVLogger(str(root), name="", version="")
        trainer = tiny_trainer(root, [cb], max_epochs=epochs, logger=logger, enable_checkpointing=True,
                               log_every_n_steps=1, **trainer_kw)
        trainer.fit(model, datamodule=blobs(**THREE_BLOBS, batch_size=40, label_noise=0.2), ckpt_path=ckpt)
        return trainer, model

    return run


def _rows(root: Path, key: str) -> list[tuple[int, float]]:
    with open(root / "metrics.csv") as fh:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(fh) if r.get(key)]


def test_snapshots_logged_saved_and_recomputable(tmp_path, fit):
    cb = DecisionRegions(num_planes=3, resolution=16, schedule="every", every_n_epochs=1,
                         render_planes=2, policy="mislabelled")
    trainer, model = fit(tmp_path, cb, epochs=3)
    out = tmp_path / "regions"
    for e in range(4):
        assert (out / f"maps_epoch{e:04d}.npz").exists() and (out / f"epoch{e:04d}.png").exists()
    for name in ("bank.pt", "history.json", "overview.png", "filmstrip.png", "filmstrip.gif"):
        assert (out / name).exists(), name
    frag = _rows(tmp_path, "regions/fragmentation")
    assert [s for s, _ in frag] == [0, 3, 6, 9]  # 3 steps per epoch (120 / 40)
    # the last logged numbers equal an independent recomputation from the final model
    bank = PlaneBank.load(out / "bank.pt")
    assert bank.policy == "mislabelled" and bank.num_planes == 3
    final = label_maps(model, bank)
    saved = load_label_maps(str(out / "maps_epoch0003.npz"))
    np.testing.assert_array_equal(final.pred, saved.pred)
    assert frag[-1][1] == pytest.approx(fragmentation(final.pred, 3).mean_normalised)
    agree = _rows(tmp_path, "regions/agreement")
    prev = load_label_maps(str(out / "maps_epoch0002.npz")).pred
    assert len(agree) == 3 and agree[-1][1] == pytest.approx(agreement(prev, final.pred))
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    per_class = [k for k in header if k.startswith("regions/fragmentation_per_class/")]
    assert per_class


def test_resume_continues_the_agreement_chain(tmp_path, fit):
    kw = dict(num_planes=2, resolution=12, schedule="every", every_n_epochs=1, render_planes=0)
    fit(tmp_path, DecisionRegions(**kw), epochs=2)
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    assert any("prev_pred" in v for v in state.values())
    root2 = tmp_path / "resumed"
    root2.mkdir()
    (root2 / "regions").mkdir()
    (root2 / "regions" / "bank.pt").write_bytes((tmp_path / "regions" / "bank.pt").read_bytes())
    fit(root2, DecisionRegions(**kw), epochs=4, ckpt=str(ckpt))
    agree = _rows(root2, "regions/agreement")
    assert len(agree) == 2  # epochs 3 and 4, epoch 3 against the checkpointed epoch 2
    prev = load_label_maps(str(tmp_path / "regions" / "maps_epoch0002.npz")).pred
    now = load_label_maps(str(root2 / "regions" / "maps_epoch0003.npz")).pred
    assert agree[0][1] == pytest.approx(agreement(prev, now))


def test_shared_bank_path_and_shape_mismatch(tmp_path, fit, blobs):
    x, y, yt = blobs(**THREE_BLOBS, label_noise=0.2).probe_set(None, "train")
    shared = tmp_path / "shared_bank.pt"
    make_plane_bank(x, y, yt, num_planes=2, resolution=8, seed=9).save(shared)
    before = shared.read_bytes()
    cb = DecisionRegions(bank_path=str(shared), epochs=[1], at_init=False, render_planes=0)
    fit(tmp_path / "a", cb, epochs=1)
    assert shared.read_bytes() == before  # reused, not rewritten
    assert load_label_maps(str(tmp_path / "a/regions/maps_epoch0001.npz")).pred.shape == (2, 8, 8)
    wrong = tmp_path / "wrong.pt"
    make_plane_bank(torch.randn(10, 1, 5), torch.arange(10) % 3, torch.arange(10) % 3,
                    num_planes=1, resolution=4).save(wrong)
    with pytest.raises(ConfigError, match=r"made for inputs of shape \(1, 5\)"):
        fit(tmp_path / "b", DecisionRegions(bank_path=str(wrong)), epochs=1)


def test_bad_arguments_refused():
    with pytest.raises(ConfigError, match="resolution"):
        DecisionRegions(resolution=1)
    with pytest.raises(ConfigError, match="policy"):
        DecisionRegions(policy="nearest")
    with pytest.raises(ConfigError, match="max_epochs"):
        DecisionRegions()._schedule(-1)
    assert DecisionRegions(num_snapshots=5)._schedule(100) == {0, 1, 3, 10, 32, 100}


def test_toy2d_input_plane(tmp_path, tiny_trainer):
    from overparam_lit.data import Toy2D

    L.seed_everything(0, verbose=False)
    model = MLP(width=32, input_shape=(2,), num_classes=3)
    cb = DecisionRegions(resolution=32, epochs=[2], render_planes=1)
    trainer = tiny_trainer(tmp_path, [cb], max_epochs=2, logger=CSVLogger(str(tmp_path), name="", version=""),
                           enable_checkpointing=True)
    trainer.fit(model, datamodule=Toy2D(n_train=300, n_test=100, batch_size=100))
    bank = PlaneBank.load(tmp_path / "regions/bank.pt")
    assert bank.policy == "input" and bank.num_planes == 1 and bank.input_shape == (2,)
    assert (tmp_path / "regions/epoch0002.png").exists()
    assert [e for e, _ in _rows(tmp_path, "regions/epoch")] == [0, 6]


@pytest.mark.ddp
def test_ddp_snapshot_once_and_equal_to_single_process(tmp_path, run_ddp):
    run_ddp("regions_ddp.py", tmp_path, timeout=240)  # fails the test unless the script exits 0
    out = tmp_path / "regions"
    assert sorted(p.name for p in out.glob("maps_epoch*.npz")) == [
        "maps_epoch0000.npz", "maps_epoch0001.npz", "maps_epoch0002.npz"]
    assert len(_rows(tmp_path, "regions/fragmentation")) == 3  # logged once per snapshot
    # rank 0's final map equals a single-process recomputation with the trained weights
    model = MLP(width=16, input_shape=(1, 8), num_classes=3)
    model.load_state_dict(torch.load(tmp_path / "final.pt", weights_only=True))
    bank = PlaneBank.load(out / "bank.pt")
    np.testing.assert_array_equal(
        label_maps(model, bank).pred, load_label_maps(str(out / "maps_epoch0002.npz")).pred)
    ranks = sorted(p.name for p in tmp_path.glob("rank*.done"))
    assert ranks == ["rank0.done", "rank1.done"]

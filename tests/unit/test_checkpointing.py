"""Checkpoints of a run folder on their own: the atomic writer, the epoch-boundary checkpoint with
a table that refers to the epoch's rows (one tiny fit, resumed once), and the stop-signal callback
driven directly."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from overparam_lit import stopping
from overparam_lit.checkpointing import (
    AtomicCheckpointIO,
    EpochBoundary,
    RunCheckpoint,
    StopOnSignal,
    resumes_after_stop,
)
from overparam_lit.loggers import CheckpointedCSVCallback
from overparam_lit.runfolder import RunFolder
from overparam_lit.testing import Blobs, small_mlp, tiny_trainer
from overparam_lit.utils import atomic_copy


# ---- the writer ----------------------------------------------------------------------------------
def test_a_checkpoint_lands_whole_in_its_own_folder(tmp_path: Path, monkeypatch) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # TMPDIR on another file system
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(4.0)}, "epoch": 1}, target)
    io.save_checkpoint({"state_dict": {"w": torch.arange(5.0)}, "epoch": 2}, f"file://{target}")
    loaded = torch.load(target, weights_only=True)
    assert loaded["epoch"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.arange(5.0))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"] and list(tmpdir.iterdir()) == []


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {}, "epoch": 1}, target)
    before = target.read_bytes()
    with pytest.raises(Exception, match="(?i)pickle"):  # a lambda cannot be pickled: torch.save fails
        io.save_checkpoint({"state_dict": {}, "epoch": 2, "hook": lambda: 0}, target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({"state_dict": {}}, target, storage_options={"x": 1})


def test_atomic_copy_is_a_file_of_its_own(tmp_path: Path) -> None:
    source, path = tmp_path / "epoch=001.ckpt", tmp_path / "last.ckpt"
    path.write_bytes(b"old")
    source.write_bytes(b"new checkpoint")
    atomic_copy(source, path)
    assert path.read_bytes() == b"new checkpoint" and not os.path.samefile(source, path)
    source.write_bytes(b"damaged")
    assert path.read_bytes() == b"new checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=001.ckpt", "last.ckpt"]  # no temporary


def test_a_remote_url_goes_to_lightning_s_writer(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, "memory://run/last.ckpt")
    memory = fsspec.filesystem("memory")
    try:
        with memory.open("/run/last.ckpt", "rb") as fh:
            assert torch.equal(torch.load(fh, weights_only=True)["state_dict"]["w"], torch.ones(2))
    finally:
        memory.rm("/run", recursive=True)


# ---- epoch-boundary checkpoints in a tiny fit ---------------------------------------------------------
EPOCHS, STEPS_PER_EPOCH = 3, 2  # 200 blobs in batches of 100


class EpochTable(CheckpointedCSVCallback):
    """One row per finished training epoch."""

    filename = "epochs.csv"
    columns = ("epoch", "step")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write_rows(trainer, [{"epoch": trainer.current_epoch, "step": trainer.global_step}])


class Saves(L.Callback):
    """What every checkpoint holds: (epoch, global step, rows of the table it refers to)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.seen.append((checkpoint["epoch"], checkpoint["global_step"],
                          checkpoint["callbacks"]["EpochTable"]["rows"]))


def fit(root: Path, epochs: int, ckpt_path: Path | None = None) -> Saves:
    saves = Saves()
    L.seed_everything(0, verbose=False)
    callbacks = [EpochBoundary(), RunCheckpoint(RunFolder(root).checkpoints), EpochTable(), saves]
    trainer = tiny_trainer(root, callbacks, max_epochs=epochs, enable_checkpointing=True,
                           plugins=[AtomicCheckpointIO()])
    trainer.fit(small_mlp(), Blobs(batch_size=100), ckpt_path=ckpt_path)
    return saves


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Saves]:
    root = tmp_path_factory.mktemp("fit") / "run"
    return root, fit(root, EPOCHS)


def test_each_checkpoint_follows_a_whole_epoch_and_refers_to_its_rows(finished) -> None:
    root, saves = finished
    # epoch e's checkpoint: e + 1 epochs trained, their rows on disk (several files per save)
    expected = [(e + 1, (e + 1) * STEPS_PER_EPOCH, e + 1) for e in range(EPOCHS)]
    assert list(dict.fromkeys(saves.seen)) == expected
    folder = RunFolder(root)
    assert sorted(p.name for p in folder.checkpoints.iterdir()) == ["epoch=002.ckpt", "last.ckpt"]
    for path in (folder.last_ckpt, folder.epoch_ckpt(EPOCHS - 1)):
        ckpt = torch.load(path, weights_only=False)
        assert (ckpt["epoch"], ckpt["global_step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)
        assert ckpt["callbacks"]["EpochTable"] == {"rows": EPOCHS, "file": "epochs.csv"}
    assert (root / "epochs.csv").read_text() == "epoch,step\n0,2\n1,4\n2,6\n"


def test_a_resume_continues_after_the_checkpoint_s_rows(finished, tmp_path: Path) -> None:
    root = tmp_path / "run"
    shutil.copytree(finished[0], root)
    with open(root / "epochs.csv", "a") as fh:
        fh.write("3,7\n")  # written after the checkpoint by a fit that was then killed
    saves = fit(root, EPOCHS + 1, ckpt_path=RunFolder(root).last_ckpt)
    # the next epoch runs whole (its two steps), neither skipped nor repeated
    assert list(dict.fromkeys(saves.seen)) == [(EPOCHS + 1, (EPOCHS + 1) * STEPS_PER_EPOCH, EPOCHS + 1)]
    assert (root / "epochs.csv").read_text() == "epoch,step\n0,2\n1,4\n2,6\n3,8\n"


# ---- stop signals -------------------------------------------------------------------------------------
def stop_trainer(root: Path, run_checkpoints: bool = True) -> SimpleNamespace:
    callbacks = [RunCheckpoint(RunFolder(root).checkpoints)] if run_checkpoints else []
    return SimpleNamespace(world_size=1, current_epoch=2, global_step=7, default_root_dir=str(root),
                           checkpoint_callbacks=callbacks, is_global_zero=True)


@pytest.mark.parametrize(("exception", "run_checkpoints", "resumes"), [
    (stopping.StopRequested(int(signal.SIGUSR1)), True, True),
    (SIGTERMException(), True, True),
    (stopping.StopRequested(int(signal.SIGTERM)), False, False),  # nothing to resume from
    (ValueError("a bug"), True, False),
    (KeyboardInterrupt(), True, False),
])
def test_resumes_after_stop(tmp_path: Path, exception: BaseException, run_checkpoints: bool,
                            resumes: bool) -> None:
    assert resumes_after_stop(stop_trainer(tmp_path, run_checkpoints), exception) is resumes


def test_a_received_signal_stops_at_the_next_step(tmp_path: Path) -> None:
    callback = StopOnSignal()
    trainer = stop_trainer(tmp_path)
    stopping.clear()
    callback.stop_if_requested(trainer)  # no signal: nothing happens
    try:
        assert stopping.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        with pytest.raises(stopping.StopRequested) as stop:
            callback.stop_if_requested(trainer)
        assert stop.value.signum == signal.SIGUSR2
    finally:
        stopping.clear()
        stopping.uninstall()


def test_a_stop_names_where_it_stopped_and_makes_the_checkpoints_durable(tmp_path: Path,
                                                                         monkeypatch) -> None:
    folder = RunFolder(tmp_path)
    folder.checkpoints.mkdir()
    for path in (folder.last_ckpt, folder.epoch_ckpt(1)):
        torch.save({"state_dict": {}}, path)
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real(fd))[1])
    stop = stopping.StopRequested(int(signal.SIGTERM))
    StopOnSignal().on_exception(stop_trainer(tmp_path), None, stop)
    assert (stop.stopped_at, stop.run_folder) == ((2, 7), str(tmp_path))
    durable = (folder.checkpoints, folder.last_ckpt, folder.epoch_ckpt(1))
    assert sorted(synced) == sorted(str(p.resolve()) for p in durable)
    synced.clear()
    other = ValueError("a bug")
    StopOnSignal().on_exception(stop_trainer(tmp_path), None, other)
    assert not hasattr(other, "stopped_at") and synced == []

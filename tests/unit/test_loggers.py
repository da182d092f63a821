"""The run-folder loggers on their own: a :class:`CheckpointedCSV` writes exactly the rows it was
given, refers a checkpoint only to rows on disk and cuts the file back to a checkpoint on resume;
the callback and logger built on it; and the flat W&B config of :func:`flatten_config`."""

from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from overparam_lit.checkpointing import RunCheckpoint
from overparam_lit.loggers import (
    CheckpointedCSV,
    CheckpointedCSVCallback,
    MetricsCSVCheckpoint,
    RunCSVLogger,
    flatten_config,
)
from overparam_lit.stopping import StopRequested
from overparam_lit.utils import fsync_deferred


def rows(n: int, start: int = 0) -> list[dict[str, int]]:
    return [{"step": s, "loss": 10 * s} for s in range(start, start + n)]


# ---- CheckpointedCSV ------------------------------------------------------------------------------
def test_rows_wait_for_flush_and_the_header_grows_sorted(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    csv = CheckpointedCSV(path)
    csv.append({"step": 0, "b": 1.5})
    assert not path.exists() and csv.rows_on_disk == 0
    assert csv.flush() == 1 and path.read_text() == "b,step\n1.5,0\n"
    csv.extend([{"step": 1, "a": torch.tensor(2.0), "b": None}, {"step": 2, "a": torch.tensor([1.0, 2.0])}])
    assert csv.flush() == 3  # a new column: the file is rewritten with the old rows under it
    assert path.read_text() == 'a,b,step\n,1.5,0\n2.0,,1\n"[1.0, 2.0]",,2\n'
    csv.append({"step": 3, "b": 4})
    assert csv.flush() == 4 and path.read_text().endswith('"[1.0, 2.0]",,2\n,4,3\n')  # appended
    assert csv.read()[-1] == {"a": "", "b": "4", "step": "3"}


def test_fixed_columns_keep_their_order_and_drop_other_keys(tmp_path: Path) -> None:
    csv = CheckpointedCSV(tmp_path / "members.csv", columns=["member", "epoch", "w"])
    csv.extend([{"epoch": 0, "member": 1, "w": 0.5, "other": 9}, {"member": 0, "epoch": 0}])
    csv.flush()
    assert (tmp_path / "members.csv").read_text() == "member,epoch,w\n1,0,0.5\n0,0,\n"


def test_an_existing_file_is_continued(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    first = CheckpointedCSV(path)
    first.extend(rows(2))
    first.flush()
    again = CheckpointedCSV(path)
    assert again.rows_on_disk == 2
    again.append({"step": 2, "loss": 20, "acc": 0.5})
    assert again.flush() == 3
    assert path.read_text() == "acc,loss,step\n,0,0\n,10,1\n0.5,20,2\n"


def test_a_checkpoint_refers_to_rows_on_disk_and_a_resume_cuts_back_to_them(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    csv = CheckpointedCSV(path)
    csv.extend(rows(3))
    state = csv.state_dict()  # buffered rows reach the file before the checkpoint names them
    assert state == {"rows": 3, "file": "m.csv"} and csv.checkpointed == 3
    at_checkpoint = path.read_text()
    assert at_checkpoint == "loss,step\n0,0\n10,1\n20,2\n"
    csv.extend(rows(2, start=3))
    csv.flush()  # rows after the checkpoint, which a resume writes again
    resumed = CheckpointedCSV(path)
    assert resumed.load_state_dict(state) == 2 and path.read_text() == at_checkpoint
    assert resumed.checkpointed == 3 and resumed.rows_on_disk == 3
    assert resumed.load_state_dict(state) == 0 and resumed.load_state_dict({}) == 0
    resumed.extend(rows(2, start=3))
    assert resumed.flush() == 5 and [r["step"] for r in resumed.read()] == ["0", "1", "2", "3", "4"]


def test_rewind_drops_what_came_after_the_newest_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    csv = CheckpointedCSV(path)
    csv.extend(rows(2))
    csv.state_dict()
    csv.extend(rows(2, start=2))
    csv.flush()
    csv.append({"step": 4, "loss": 40})  # buffered, never written
    assert csv.rewind() == 2
    assert path.read_text() == "loss,step\n0,0\n10,1\n" and csv.pending == []
    assert csv.flush() == 2
    fresh = CheckpointedCSV(tmp_path / "n.csv")  # no checkpoint made: nothing is kept
    fresh.extend(rows(2))
    fresh.flush()
    assert fresh.rewind() == 2 and fresh.read() == [] and fresh.rows_on_disk == 0


def test_truncate_never_grows_or_touches_a_shorter_file(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    csv = CheckpointedCSV(path)
    assert csv.truncate(0) == 0 and not path.exists()
    csv.extend(rows(2))
    csv.flush()
    before = path.stat().st_mtime_ns, path.read_text()
    assert csv.truncate(5) == 0 and csv.truncate(2) == 0
    assert (path.stat().st_mtime_ns, path.read_text()) == before


def test_state_dict_waits_for_the_disk_unless_deferred(tmp_path: Path, monkeypatch) -> None:
    csv = CheckpointedCSV(tmp_path / "m.csv")
    csv.extend(rows(1))
    csv.flush()
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    csv.append({"step": 1, "loss": 10})
    with fsync_deferred():
        csv.state_dict()
    assert synced == []
    csv.append({"step": 2, "loss": 20})
    csv.state_dict()
    assert len(synced) == 1  # the appended rows, before the checkpoint refers to them


# ---- the callback base, the logger ----------------------------------------------------------------
class Table(CheckpointedCSVCallback):
    filename = "table.csv"
    columns = ("member", "epoch")


def trainer_at(root: Path, rank: int = 0, **extra) -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, default_root_dir=str(root), **extra)


def test_a_table_callback_cuts_its_file_back_to_the_checkpoint_it_resumes(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("member,epoch\n0,0\n1,0\n0,1\n1,1\n")
    table = Table()
    table.load_state_dict({"rows": 2, "file": "table.csv"})  # Lightning restores before setup
    table.setup(trainer_at(tmp_path), None, "fit")
    assert (tmp_path / "table.csv").read_text() == "member,epoch\n0,0\n1,0\n"
    table.write_rows(trainer_at(tmp_path), [{"member": m, "epoch": 1, "w": 3} for m in range(2)])
    assert table.state_dict() == {"rows": 4, "file": "table.csv"}
    assert (tmp_path / "table.csv").read_text() == "member,epoch\n0,0\n1,0\n0,1\n1,1\n"


def test_a_table_callback_writes_nothing_on_other_ranks(tmp_path: Path) -> None:
    table = Table()
    table.setup(trainer_at(tmp_path, rank=1), None, "fit")
    table.write_rows(trainer_at(tmp_path, rank=1), [{"member": 0, "epoch": 0}])
    assert table.state_dict() == {} and not (tmp_path / "table.csv").exists()


def test_an_error_keeps_the_rows_and_a_stop_signal_rewinds_them(tmp_path: Path) -> None:
    checkpoints = [RunCheckpoint(tmp_path / "checkpoints")]
    for exception, kept in ((ValueError("bug"), 3), (StopRequested(15), 1)):
        path = tmp_path / "table.csv"
        path.unlink(missing_ok=True)
        trainer = trainer_at(tmp_path, checkpoint_callbacks=checkpoints)
        table = Table()
        table.setup(trainer, None, "fit")
        table.write_rows(trainer, [{"member": 0, "epoch": 0}])
        table.state_dict()  # the checkpoint of epoch 0
        table.write_rows(trainer, [{"member": 0, "epoch": 1}, {"member": 0, "epoch": 2}])
        table.on_exception(trainer, None, exception)
        assert [r["epoch"] for r in table.csv.read()] == [str(e) for e in range(kept)], exception


def test_run_csv_logger_writes_lightning_s_metrics_layout(tmp_path: Path) -> None:
    logger = RunCSVLogger(tmp_path, flush_logs_every_n_steps=2)
    assert logger.save_dir == logger.log_dir == logger.root_dir == str(tmp_path)
    assert logger.experiment is logger.csv
    logger.log_hyperparams(Namespace(width=8, lr=0.1))
    logger.log_hyperparams({"depth": 2})
    assert yaml.safe_load((tmp_path / "hparams.yaml").read_text()) == {"width": 8, "lr": 0.1, "depth": 2}
    logger.log_metrics({"train/loss": 0.5}, step=0)
    assert not (tmp_path / "metrics.csv").exists()
    logger.log_metrics({"val/acc": 0.75, "step": 99}, step=1)  # every second step reaches the file
    assert (tmp_path / "metrics.csv").read_text() == "step,train/loss,val/acc\n0,0.5,\n1,,0.75\n"
    logger.log_metrics({"train/loss": 0.25})  # no step: the count of logged rows
    logger.finalize("success")
    assert (tmp_path / "metrics.csv").read_text().endswith("\n2,0.25,\n")


def test_the_logger_s_rows_wait_for_the_disk_once_when_the_fit_ends(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real(fd))[1])
    logger = RunCSVLogger(tmp_path)
    logger.log_hyperparams({"width": 8})
    logger.log_metrics({"model/width": 8.0}, step=0)
    logger.save()  # creates the file
    logger.log_metrics({"train/loss": 0.5, "epoch": 0}, step=3)
    logger.save()  # new columns: the file is replaced
    logger.log_metrics({"train/loss": 0.25, "epoch": 1}, step=7)
    logger.save()  # appended
    assert synced == [] and logger.csv.rows_on_disk == 3
    logger.finalize("success")  # both files, and the folder entries of their renames
    files = (tmp_path / "hparams.yaml", tmp_path / "metrics.csv")
    assert set(synced) == {str(p.resolve()) for p in (tmp_path, *files)} and len(synced) <= 4
    assert yaml.safe_load(files[0].read_text()) == {"width": 8}
    synced.clear()
    MetricsCSVCheckpoint().on_fit_end(trainer_at(tmp_path, loggers=[logger]), None)
    logger.finalize("success")
    assert synced == []  # nothing new since
    logger.log_metrics({"train/loss": 0.125, "epoch": 2}, step=11)
    logger.finalize("success")
    assert synced == [str((tmp_path / "metrics.csv").resolve())]  # appended, in place
    assert logger.csv.read()[-1] == {"epoch": "2", "model/width": "", "step": "11", "train/loss": "0.125"}


def test_metrics_checkpoint_uses_the_logger_s_csv_and_takes_no_rows(tmp_path: Path) -> None:
    logger = RunCSVLogger(tmp_path)
    callback = MetricsCSVCheckpoint()
    assert callback.state_key == "MetricsCSV"
    assert callback.open_csv(SimpleNamespace(global_rank=0, loggers=[object(), logger])) is logger.csv
    assert callback.open_csv(SimpleNamespace(global_rank=1, loggers=[logger])) is None
    with pytest.raises(TypeError, match="through the trainer's loggers"):
        callback.write_rows(trainer_at(tmp_path), [{"step": 0}])


# ---- flatten_config ------------------------------------------------------------------------------------
CONFIG = {
    "seed_everything": 0,
    "model": {"class_path": "overparam_lit.models.MLP", "init_args": {
        "width": 8, "input_shape": (1, 40),
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 5}}}},
    "data": {"class_path": "overparam_lit.data.MNIST1D",
             "init_args": {"label_noise": 0.2, "root": Path("/d")}, "dict_kwargs": {"extra": 1}},
    "trainer": {"max_epochs": 3, "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger"},
                "plugins": ["x"], "callbacks": [
                    {"class_path": "overparam_lit.callbacks.HessianProbe", "init_args": {"k": 5}},
                    {"class_path": "overparam_lit.callbacks.HessianProbe", "init_args": {"k": 7}},
                    {"class_path": "overparam_lit.callbacks.Widen"}]},
    "wandb": {"mode": "offline", "tags": ("a", "b"), "entity": None},
    "loss": len,
    "config": [Path("configs/quickstart.yaml")],
    "subcommand": "fit",
}
FLAT = {
    "seed_everything": 0,
    "model.class_path": "overparam_lit.models.MLP", "model.width": 8, "model.input_shape": [1, 40],
    "optimizer.class_path": "torch.optim.SGD", "optimizer.lr": 0.1, "optimizer.momentum": 0.9,
    "lr_scheduler.class_path": "torch.optim.lr_scheduler.StepLR", "lr_scheduler.step_size": 5,
    "data.class_path": "overparam_lit.data.MNIST1D", "data.label_noise": 0.2, "data.root": "/d",
    "data.extra": 1,
    "trainer.max_epochs": 3,
    "callbacks": "HessianProbe, HessianProbe, Widen",
    "callbacks.HessianProbe.k": 5, "callbacks.HessianProbe_2.k": 7,
    "wandb.mode": "offline", "wandb.tags": ["a", "b"], "wandb.entity": None,
    "loss": "len",
    "config_files": ["configs/quickstart.yaml"],
}


def test_flatten_config_gives_dotted_keys() -> None:
    assert flatten_config(CONFIG) == FLAT
    assert flatten_config(Namespace(**CONFIG)) == FLAT
    assert CONFIG["trainer"]["callbacks"][0]["init_args"] == {"k": 5}  # the input is left as it was


def test_flatten_config_of_a_plain_model_and_one_callback() -> None:
    flat = flatten_config({"model": {"width": 4}, "trainer": {"callbacks": {
        "class_path": "a.b.Ticket", "init_args": {"level": 2}}}})
    assert flat == {"model.width": 4, "callbacks": "Ticket", "callbacks.Ticket.level": 2}

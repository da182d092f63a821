"""Resumes that cannot lose rows: real ``kill -9`` of ``python -m overparam_lit fit`` at the moments
that used to lose or duplicate rows, then a resume, compared with an uninterrupted run.

The kill moments come from :func:`overparam_lit.testing.install_kill_hook`, installed in the
child process (:data:`~overparam_lit.testing.KILLED_CLI`) around the renames of
``overparam_lit.utils.atomic_write`` (``after:last.ckpt#2`` = SIGKILL right after the second
``last.ckpt`` landed; ``mid:...`` = while the file is half written), because the gaps between two
checkpoint files are microseconds wide and polling the file system cannot hit them.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from overparam_lit.cli import main
from overparam_lit.loggers import CheckpointedCSV
from overparam_lit.runfolder import RunFolder
from overparam_lit.testing import KILLED_CLI

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 4
COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--seed_everything", "0",
          "--trainer.max_epochs", str(EPOCHS), "--wandb.mode", "disabled",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def rows_of(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def epoch_rows(run: Path) -> list[tuple]:
    """The train/val/test rows as (epoch, step, kind, values): what must match a clean run."""
    out = []
    for r in rows_of(run):
        for kind in ("train", "val", "test"):
            keys = sorted(k for k in r if k.startswith(f"{kind}/") and r[k])
            if keys:
                out.append((r["epoch"], r["step"], kind, tuple(float(r[k]) for k in keys)))
    return out


def fit_killed(run: Path, kill: str, *extra: str, env_extra: dict[str, str] | None = None) -> None:
    """``python -m overparam_lit fit`` that SIGKILLs itself at ``kill`` (see the module docstring)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", KILLED_CLI, kill, "fit", *COMMON, *extra,
                           "--trainer.default_root_dir", str(run)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def resume(run: Path, ckpt: Path | None = None, *extra: str) -> None:
    main(["fit", *COMMON, *extra, "--trainer.default_root_dir", str(run),
          "--ckpt_path", str(ckpt or run / "checkpoints" / "last.ckpt")])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    """The rows of an uninterrupted fit."""
    run = tmp_path_factory.mktemp("ref") / "run"
    main(["fit", *COMMON, "--trainer.default_root_dir", str(run)])
    rows = epoch_rows(run)
    assert [k for _, _, k, _ in rows] == ["val", "train"] * EPOCHS + ["test"]
    return rows


def test_kill_just_after_a_checkpoint_lands_loses_no_train_row(tmp_path: Path, reference) -> None:
    run = tmp_path / "run"
    fit_killed(run, "after:last.ckpt#2")  # dies right after the checkpoint of epoch 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * 40  # 4000 samples / batch 100 = 40 steps per epoch
    # the checkpoint refers to rows on disk: epoch 1's train row is among them
    on_disk = epoch_rows(run)
    assert on_disk[: 4] == reference[: 4] and on_disk[3][2] == "train" and on_disk[3][0] == "1"
    assert ckpt["callbacks"]["MetricsCSV"]["rows"] == len(rows_of(run))
    resume(run)
    assert epoch_rows(run) == reference


def test_kill_between_epoch_checkpoint_and_last_duplicates_nothing(tmp_path: Path, reference) -> None:
    run = tmp_path / "run"
    fit_killed(run, "after:epoch=002.ckpt")  # epoch=002.ckpt landed, last.ckpt is still epoch 1's
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    newest = torch.load(run / "checkpoints" / "epoch=002.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 80 and newest["global_step"] == 120
    assert len(rows_of(run)) > last["callbacks"]["MetricsCSV"]["rows"]  # epoch 2's rows are on disk
    resume(run)  # from last.ckpt: epoch 2 is trained again, its first rows are dropped
    assert epoch_rows(run) == reference


def test_kill_inside_the_header_rewrite_keeps_metrics_csv(tmp_path: Path, reference) -> None:
    run = tmp_path / "run"
    # metrics.csv is rewritten when new columns appear: the first (model/*), the first val row,
    # the first train row; the third rewrite is at epoch 0's checkpoint, with the train columns
    fit_killed(run, "mid:metrics.csv#3")
    rows = rows_of(run)
    assert rows and "train/loss" not in rows[0]  # the old file, whole: two rows, no train columns yet
    assert [r["epoch"] for r in rows] == ["", "0"]
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").glob("*.ckpt"))
    assert list(run.glob(".metrics.csv.*.tmp"))  # the half-written temporary, beside the file
    main(["fit", *COMMON, "--trainer.default_root_dir", str(run), "--overwrite", "true"])
    assert epoch_rows(run) == reference
    assert not list(run.glob(".*.tmp"))


def test_kill_while_last_ckpt_is_written_leaves_the_old_one(tmp_path: Path, reference) -> None:
    run, tmpdir = tmp_path / "run", tmp_path / "elsewhere"
    tmpdir.mkdir()
    fit_killed(run, "mid:last.ckpt#3", env_extra={"TMPDIR": str(tmpdir)})
    assert list(tmpdir.iterdir()) == []  # nothing was written through TMPDIR
    stale = list((run / "checkpoints").glob(".last.ckpt.*.tmp"))
    assert len(stale) == 1
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 80  # the previous last.ckpt, intact
    resume(run)
    assert epoch_rows(run) == reference
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the resumed fit removed the orphan


def test_corrupt_last_ckpt_names_the_newest_intact_one(tmp_path: Path, capsys, reference) -> None:
    run = tmp_path / "run"
    fit_killed(run, "after:last.ckpt#3")
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a kill during a non-atomic write left
    before = sorted((p.name, p.stat().st_size) for p in run.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        resume(run)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    newest = run / "checkpoints" / "epoch=002.ckpt"
    assert "--ckpt_path cannot be read" in err and f"--ckpt_path {newest}" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert sorted((p.name, p.stat().st_size) for p in run.rglob("*")) == before  # nothing touched
    main(["fit", *COMMON, "--trainer.default_root_dir", str(run), "--ckpt_path", "last"])  # falls back
    assert f"{last} is missing or damaged; resuming from {newest}" in capsys.readouterr().err
    assert epoch_rows(run) == reference
    assert RunFolder(run).resume_checkpoint() == last  # the resumed fit wrote a new, intact last.ckpt


# ---- the reusable CSV machinery ----------------------------------------------------------------
def test_checkpointed_csv_append_flush_truncate(tmp_path: Path) -> None:
    table = CheckpointedCSV(tmp_path / "t.csv")
    table.append({"b": 1, "step": 0})
    table.append({"a": torch.tensor(2.5), "step": 1})
    assert not (tmp_path / "t.csv").exists()  # buffered
    state = table.state_dict()
    assert state == {"rows": 2, "file": "t.csv"}
    table.append({"a": 3, "c": "x", "step": 2})  # a new column: the file is rewritten in one piece
    assert table.flush() == 3
    with open(tmp_path / "t.csv") as fh:
        assert fh.read().splitlines() == ["a,b,c,step", ",1,,0", "2.5,,,1", "3,,x,2"]
    reopened = CheckpointedCSV(tmp_path / "t.csv")  # a resumed process
    assert reopened.rows_on_disk == 3 and reopened.columns == ["a", "b", "c", "step"]
    assert reopened.load_state_dict(state) == 1
    assert [r["step"] for r in reopened.read()] == ["0", "1"]
    fixed = CheckpointedCSV(tmp_path / "m.csv", columns=["member", "loss"])
    fixed.extend([{"member": 0, "loss": 1.0, "ignored": 5}, {"member": 1}])
    fixed.flush(sync=True)
    assert (tmp_path / "m.csv").read_text().splitlines() == ["member,loss", "0,1.0", "1,"]


MEMBERS_LIKE = '''
from overparam_lit.loggers import CheckpointedCSVCallback
from overparam_lit.runfolder import RunFolder


class MembersLike(CheckpointedCSVCallback):
    """A members.csv-like table: one row per member and epoch, written through the base class."""

    filename = RunFolder.MEMBERS
    columns = ("member", "epoch", "step", "w")

    def on_train_epoch_end(self, trainer, pl_module):
        w = float(sum(p.detach().sum() for p in pl_module.parameters()))
        self.write_rows(trainer, [{"member": m, "epoch": trainer.current_epoch, "step": trainer.global_step,
                                   "w": w + m} for m in range(2)])
'''


def test_a_callback_table_follows_the_checkpoint_on_resume(tmp_path: Path, monkeypatch) -> None:
    """The base class wiring: a killed fit's table is cut back to its checkpoint on resume."""
    (tmp_path / "members_like.py").write_text(MEMBERS_LIKE)
    monkeypatch.chdir(tmp_path)
    extra = ["--trainer.callbacks+=members_like.MembersLike"]
    ref = tmp_path / "ref"
    main(["fit", *COMMON, *extra, "--trainer.default_root_dir", str(ref)])
    expected = RunFolder(ref).read_members()
    assert [(r["member"], r["epoch"]) for r in expected] == [(str(m), str(e)) for e in range(EPOCHS)
                                                              for m in range(2)]
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", KILLED_CLI, "after:epoch=002.ckpt", "fit", *COMMON, *extra,
                           "--trainer.default_root_dir", str(run)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert len(RunFolder(run).read_members()) == 6  # epochs 0-2 on disk, last.ckpt holds 0-1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["callbacks"]["MembersLike"] == {"rows": 4, "file": "members.csv"}
    resume(run, None, *extra)
    assert RunFolder(run).read_members() == expected


def test_imp_killed_at_a_level_boundary_resumes_exactly(tmp_path: Path) -> None:
    """IMP with 2 epochs per level, killed right after the checkpoint that ends level 0: that
    checkpoint is taken before IMP finishes level 0 and prunes for level 1, which the resume does."""
    imp = ["-c", str(REPO / "callbacks" / "imp.yaml"), "--trainer.callbacks.levels", "2",
           "--data.train_subset", "400", "--trainer.max_epochs", "2"]
    ref = tmp_path / "ref"
    main(["fit", *COMMON, *imp, "--trainer.default_root_dir", str(ref)])
    run = tmp_path / "run"
    fit_killed(run, "after:last.ckpt#2", *imp)  # after epoch 1: level 0 trained, not yet finished
    assert [p.name for p in RunFolder(run).imp_levels()] == ["level_00"]
    main(["fit", *COMMON, *imp, "--trainer.default_root_dir", str(run), "--ckpt_path", "last"])
    a, b = RunFolder(ref), RunFolder(run)
    assert rows_of(run) == rows_of(ref)  # every row, the imp/* ones included
    assert b.read_json(b.imp_summary) == a.read_json(a.imp_summary)
    for level in range(3):
        wa = torch.load(a.imp_final(level), weights_only=True)
        wb = torch.load(b.imp_final(level), weights_only=True)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), level

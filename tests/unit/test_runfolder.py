"""The run folder on its own: which checkpoint resumes a run when some are damaged, what counts as
a run, what ``--overwrite`` and a restart delete, the folder lock against a live and a dead
holder, and the one-paragraph errors of unreadable checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from overparam_lit.runfolder import (
    LOCK_ENV,
    RunFolder,
    RunLock,
    checkpoint_problem,
    load_torch_file,
    read_checkpoint,
)
from overparam_lit.utils import ConfigError

ARTIFACTS = ["config.yaml", "metrics.csv", "members.csv", "hparams.yaml", "checkpoints", "imp", "hessian",
             "regions", "widen", "wandb", "done.json"]
"""What a fit leaves in its folder (the layout in the module docstring of runfolder.py)."""


def save_ckpt(path: Path, epoch: int, age: int = 0) -> Path:
    """A minimal Lightning checkpoint of ``epoch``, modified ``age`` seconds before a fixed time
    (so that "newest" does not depend on how fast the test writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.full((3,), float(epoch))}, "epoch": epoch}, path)
    stamp = 1_700_000_000 - age
    os.utime(path, (stamp, stamp))
    return path


def damage(path: Path, how: str) -> Path:
    """Spoil a checkpoint file the ways a crash or a full disk leaves one (keeping its age)."""
    stamp = path.stat().st_mtime_ns
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    elif how == "not_lightning":
        torch.save({"w": torch.zeros(3)}, path)
    os.utime(path, ns=(stamp, stamp))
    return path


# ---- names ---------------------------------------------------------------------------------------
def test_paths_follow_the_layout_and_the_trainer_root() -> None:
    f = RunFolder.of(SimpleNamespace(default_root_dir="runs/a"))
    assert f.root == Path("runs/a") and repr(f) == "RunFolder('runs/a')"
    assert f.checkpoints == Path("runs/a/checkpoints") and f.widen_json == Path("runs/a/widen/widen.json")
    assert f.imp_level(12) == Path("runs/a/imp/level_12") and f.imp_rewind(0).name == "rewind.pt"
    assert f.imp_final(1) == Path("runs/a/imp/level_01/final.pt")
    assert f.imp_sparsity(2).name == "sparsity.json" and f.imp_metrics(2).name == "metrics.json"
    assert f.ticket_start == Path("runs/a/imp/ticket_start.json")


def test_listings_are_sorted_and_empty_without_their_folder(tmp_path: Path) -> None:
    f = RunFolder(tmp_path)
    assert f.imp_levels() == [] and f.wandb_offline_runs() == [] and f.wandb_run_files() == []
    assert f.checkpoint_files() == [] and f.config_backups() == []
    for level in (10, 2, 0):
        f.imp_level(level).mkdir(parents=True)
    (f.imp / "level_99").write_text("a file, not a level")
    assert [p.name for p in f.imp_levels()] == ["level_00", "level_02", "level_10"]
    for name in ("offline-run-20250102_000000-b", "offline-run-20250101_000000-a", "run-20250103_000000-c"):
        (f.wandb / name).mkdir(parents=True)
        (f.wandb / name / f"run-{name[-1]}.wandb").write_bytes(b"")
    assert [p.name[-1] for p in f.wandb_offline_runs()] == ["a", "b"]
    assert [p.name for p in f.wandb_run_files()] == ["run-a.wandb", "run-b.wandb", "run-c.wandb"]


def test_checkpoint_files_newest_first_and_owns(tmp_path: Path) -> None:
    f = RunFolder(tmp_path)
    save_ckpt(f.epoch_ckpt(0), 0, age=30)
    save_ckpt(f.epoch_ckpt(1), 1, age=20)
    save_ckpt(f.last_ckpt, 1, age=20)  # written with epoch=001.ckpt: same time, last.ckpt first
    (f.checkpoints / "folder.ckpt").mkdir()
    assert [p.name for p in f.checkpoint_files()] == ["last.ckpt", "epoch=001.ckpt", "epoch=000.ckpt"]
    assert f.owns(f.last_ckpt) and f.owns(f.checkpoints / "x" / ".." / "epoch=000.ckpt")
    assert not f.owns(tmp_path / "elsewhere.ckpt") and not f.owns(tmp_path.parent / "checkpoints" / "a")


# ---- which checkpoint resumes a run ----------------------------------------------------------------
def test_an_intact_last_checkpoint_resumes_even_beside_a_newer_epoch_file(tmp_path: Path) -> None:
    f = RunFolder(tmp_path)
    save_ckpt(f.last_ckpt, 1, age=20)
    save_ckpt(f.epoch_ckpt(2), 2, age=10)
    assert f.resume_checkpoint() == f.last_ckpt
    assert f.newest_intact_checkpoint() == f.epoch_ckpt(2)
    assert f.newest_intact_checkpoint(exclude=f.epoch_ckpt(2)) == f.last_ckpt


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "not_lightning"])
def test_a_damaged_last_checkpoint_falls_back_to_the_newest_intact_one(tmp_path: Path, how: str) -> None:
    f = RunFolder(tmp_path)
    save_ckpt(f.epoch_ckpt(0), 0, age=40)
    save_ckpt(f.epoch_ckpt(1), 1, age=30)
    damage(save_ckpt(f.epoch_ckpt(2), 2, age=20), how)  # newer than epoch 1, but damaged too
    damage(save_ckpt(f.last_ckpt, 2, age=10), how)
    assert checkpoint_problem(f.last_ckpt) is not None and checkpoint_problem(f.epoch_ckpt(1)) is None
    assert f.resume_checkpoint() == f.epoch_ckpt(1)
    assert torch.load(f.resume_checkpoint(), weights_only=True)["epoch"] == 1


def test_no_intact_checkpoint_resumes_nothing(tmp_path: Path) -> None:
    f = RunFolder(tmp_path)
    assert f.resume_checkpoint() is None  # no checkpoints/ at all
    damage(save_ckpt(f.last_ckpt, 1), "truncated")
    damage(save_ckpt(f.epoch_ckpt(1), 1), "empty")
    assert f.resume_checkpoint() is None and f.newest_intact_checkpoint() is None


# ---- what counts as a run, and what is deleted ----------------------------------------------------------
@pytest.mark.parametrize("name", [*ARTIFACTS, "config.yaml.1700000000.bak"])
def test_any_run_artifact_means_the_folder_holds_a_run(tmp_path: Path, name: str) -> None:
    f = RunFolder(tmp_path / "run")
    assert not f.holds_run()  # missing folder
    f.root.mkdir()
    for other in ("notes.txt", "slurm-1.out", "run.lock", ".metrics.csv.abc.tmp"):
        (f.root / other).write_text("x")
    assert not f.holds_run() and f.existing_artifacts() == []
    path = f.root / name
    path.mkdir() if "." not in name else path.write_text("x")
    assert f.holds_run() and f.existing_artifacts() == [path]


def test_clear_deletes_the_run_and_keeps_everything_else(tmp_path: Path) -> None:
    f = RunFolder(tmp_path / "run")
    f.root.mkdir()
    for name in ARTIFACTS:
        if "." in name:
            (f.root / name).write_text("x")
        else:
            (f.root / name / "sub").mkdir(parents=True)
            (f.root / name / "sub" / "file").write_text("x")
    (f.root / "config.yaml.1700000000.bak").write_text("old")
    (f.root / ".metrics.csv.abc.tmp").write_text("half")
    outside = tmp_path / "shared_wandb"
    outside.mkdir()
    (outside / "keep").write_text("other runs")
    (f.wandb / "sub" / "file").unlink()
    (f.wandb / "sub").rmdir()
    f.wandb.rmdir()
    f.wandb.symlink_to(outside)  # a linked folder is unlinked, never emptied
    kept = {"notes.txt": "mine", "slurm-1.out": "log", "run.lock": "{}"}
    for name, text in kept.items():
        (f.root / name).write_text(text)
    removed = f.clear()
    assert sorted(p.name for p in removed) == sorted([*ARTIFACTS, "config.yaml.1700000000.bak",
                                                       ".metrics.csv.abc.tmp"])
    assert {p.name: p.read_text() for p in f.root.iterdir()} == kept
    assert (outside / "keep").read_text() == "other runs"
    assert not f.holds_run() and f.clear() == []


def test_remove_stale_temporaries_deletes_half_written_files_only(tmp_path: Path) -> None:
    f = RunFolder(tmp_path)
    assert RunFolder(tmp_path / "missing").remove_stale_temporaries() == []
    stale = [f.root / ".metrics.csv.a1.tmp", f.checkpoints / ".last.ckpt.b2.tmp",
             f.imp_level(3) / ".mask.pt.c3.tmp", f.imp / ".summary.json.d4.tmp",
             f.hessian / ".probe_step00000001.npz.e5.tmp", f.regions / ".bank.pt.f6.tmp"]
    kept = [f.root / "metrics.csv", f.checkpoints / "last.ckpt", f.imp_level(3) / "mask.pt",
            f.root / "notes.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert sorted(f.remove_stale_temporaries()) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.read_text() == "x" for p in kept)


# ---- config backups, done.json, JSON artifacts -------------------------------------------------------
def test_write_config_keeps_each_earlier_config_once(tmp_path: Path) -> None:
    f = RunFolder(tmp_path)
    f.write_config("a: 1\n")
    f.write_config("a: 2\n")  # a fresh fit replaces it
    assert f.config_backups() == [] and f.read_config() == {"a": 2}
    os.utime(f.config_yaml, (1_700_000_000, 1_700_000_000))
    f.write_config("a: 3\n", keep_old=True)
    os.utime(f.config_yaml, (1_700_000_000, 1_700_000_000))  # same second: the name gets a suffix
    f.write_config("a: 4\n", keep_old=True)
    backups = {p.name: p.read_text() for p in f.config_backups()}
    assert backups == {"config.yaml.1700000000.bak": "a: 2\n", "config.yaml.1700000000-1.bak": "a: 3\n"}
    assert f.read_config() == {"a": 4}
    f.config_yaml.write_text("a: [unclosed\n")
    assert f.read_config() == {}


def test_done_and_json_artifacts_round_trip(tmp_path: Path) -> None:
    f = RunFolder(tmp_path)
    assert f.read_done() is None and f.read_metrics() == [] and f.read_members() == []
    f.write_done({"exit_code": 0, "epochs": 3})
    assert f.read_done() == {"exit_code": 0, "epochs": 3}
    assert json.loads(f.done_json.read_text())["epochs"] == 3
    assert f.read_json("done.json") == f.read_json(f.done_json) == f.read_done()  # relative to the folder


# ---- the lock -----------------------------------------------------------------------------------------
HOLD_LOCK = ("import sys\nfrom overparam_lit.runfolder import RunLock\nRunLock(sys.argv[1]).acquire()\n"
             "print('held', flush=True)\nsys.stdin.read()\n")


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(LOCK_ENV, raising=False)
    path = tmp_path / "run" / "run.lock"
    lock = RunLock(path).acquire()
    try:
        info = json.loads(path.read_text())
        assert lock.held and not lock.inherited
        assert (info["pid"], info["host"], info["token"]) == (os.getpid(), socket.gethostname(), lock.token)
        assert os.environ[LOCK_ENV] == f"{path.resolve()}|{lock.token}"
    finally:
        lock.release()
    assert not path.exists() and LOCK_ENV not in os.environ and not lock.held
    lock.release()  # a second release does nothing
    with RunLock(path) as again:
        assert again.held and path.exists()
    assert not path.exists()


def test_a_live_holder_keeps_the_folder_busy_and_a_dead_ones_lock_is_taken_over(tmp_path: Path,
                                                                               monkeypatch) -> None:
    monkeypatch.delenv(LOCK_ENV, raising=False)
    path = tmp_path / "run" / "run.lock"
    env = {k: v for k, v in os.environ.items() if k != LOCK_ENV}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as busy:
            RunLock(path).acquire()
        message = str(busy.value)
        assert "in use by another fit" in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert str(path) in message and f"(got {str(path.parent)!r})" in message
        with pytest.raises(ConfigError, match="in use by another fit"):
            RunLock(path).check_free()
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(path.read_text())["pid"] == holder.pid  # the dead holder's file is still there
    RunLock(path).check_free()
    lock = RunLock(path).acquire()
    try:
        assert lock.held and json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not path.exists()


# ---- unreadable checkpoints -------------------------------------------------------------------------
def test_read_checkpoint_returns_an_intact_one(tmp_path: Path) -> None:
    ckpt = read_checkpoint(save_ckpt(tmp_path / "a.ckpt", 4))
    assert ckpt["epoch"] == 4 and torch.equal(ckpt["state_dict"]["w"], torch.full((3,), 4.0))


@pytest.mark.parametrize(("how", "problem"), [
    ("truncated", "it does not load ("),
    ("garbage", "it does not load ("),
    ("empty", "the file is empty (0 bytes)"),
    ("not_lightning", "it loads but is not a Lightning checkpoint (no 'state_dict')"),
])
def test_read_checkpoint_names_the_newest_intact_neighbour(tmp_path: Path, how: str, problem: str) -> None:
    folder = tmp_path / "checkpoints"
    save_ckpt(folder / "epoch=000.ckpt", 0, age=30)
    save_ckpt(folder / "epoch=001.ckpt", 1, age=20)
    damage(save_ckpt(folder / "epoch=002.ckpt", 2, age=15), "truncated")  # newer, but damaged
    bad = damage(save_ckpt(folder / "last.ckpt", 2, age=10), how)
    with pytest.raises(ConfigError) as err:
        read_checkpoint(bad)
    intact = folder / "epoch=001.ckpt"
    assert str(err.value).startswith(f"--ckpt_path cannot be read: {problem}")
    assert str(err.value).endswith(f"(got {str(bad)!r}). The newest intact checkpoint there is {intact}: "
                                   f"resume with --ckpt_path {intact}.")
    assert "\n" not in str(err.value)


def test_read_checkpoint_without_an_intact_neighbour(tmp_path: Path) -> None:
    missing = tmp_path / "last.ckpt"
    with pytest.raises(ConfigError) as err:
        read_checkpoint(missing)
    assert str(err.value) == (f"--ckpt_path cannot be read: no such file (got {str(missing)!r}). No intact "
                              "checkpoint lies beside it: start the fit again without --ckpt_path.")
    bad = damage(save_ckpt(tmp_path / "x.ckpt", 1), "truncated")
    with pytest.raises(ConfigError) as err:
        read_checkpoint(bad, "the checkpoint to export", use="export", otherwise="give another one")
    assert str(err.value).startswith("the checkpoint to export cannot be read: it does not load (")
    assert "damaged or truncated" in str(err.value) and str(err.value).endswith(
        f"(got {str(bad)!r}). No intact checkpoint lies beside it: give another one.")
    save_ckpt(tmp_path / "y.ckpt", 0)
    neighbour = r"The newest intact checkpoint there is .*y\.ckpt: export .*y\.ckpt\.$"
    with pytest.raises(ConfigError, match=neighbour):
        read_checkpoint(bad, "the checkpoint to export", use="export", otherwise="give another one")


def test_read_checkpoint_of_a_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        read_checkpoint(empty)
    assert str(err.value) == (f"--ckpt_path cannot be read: it is a folder, not a checkpoint file (got "
                              f"{str(empty)!r}). Give a checkpoint file, e.g. --ckpt_path "
                              f"{empty / 'last.ckpt'}.")
    inner = save_ckpt(tmp_path / "full" / "last.ckpt", 1)
    with pytest.raises(ConfigError, match=f"The newest intact checkpoint there is {inner}"):
        read_checkpoint(tmp_path / "full")


def test_load_torch_file_explains_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "mask.pt"
    torch.save({"w": torch.ones(2, dtype=torch.bool)}, path)
    assert torch.equal(load_torch_file(path, "the mask", "Rerun IMP.")["w"], torch.ones(2, dtype=torch.bool))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ConfigError) as err:
        load_torch_file(path, "the mask", "Rerun IMP.")
    assert str(err.value).startswith("the mask cannot be read: it does not load (")
    assert str(err.value).endswith(f"it is damaged or truncated (got {str(path)!r}). Rerun IMP.")


# ---- writability ----------------------------------------------------------------------------------------
def test_check_writable_refuses_files_in_the_way_and_leaves_nothing(tmp_path: Path) -> None:
    deep = RunFolder(tmp_path / "a" / "b" / "run")
    deep.check_writable()
    assert list(tmp_path.iterdir()) == []  # nothing created, no probe left
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="the run folder is a file, not a folder"):
        RunFolder(tmp_path / "file").check_writable()
    with pytest.raises(ConfigError, match="a parent of the run folder is a file, not a folder"):
        RunFolder(tmp_path / "file" / "run").check_writable()


def test_reserve_makes_a_fresh_folder_each_time(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "20261208-010000"
    first, created = RunFolder.reserve(base)
    assert first.root == base and created == [base, tmp_path / "runs"]
    second, created = RunFolder.reserve(base)  # the same second: the next free name
    third, _ = RunFolder.reserve(base)
    assert (second.root.name, third.root.name) == ("20261208-010000-1", "20261208-010000-2")
    assert created == [second.root]  # runs/ existed already
    assert all(f.root.is_dir() for f in (first, second, third))

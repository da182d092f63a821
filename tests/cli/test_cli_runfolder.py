"""Run folders that cannot be mixed up: the lock, refusing a new fit into a folder holding a run,
``--overwrite``, fresh default folders, and the names of :class:`RunFolder`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from overparam_lit import cli
from overparam_lit.cli import main
from overparam_lit.runfolder import LOCK_ENV, RunFolder, RunLock

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--wandb.mode", "disabled",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    """Every file below ``folder`` with its size and modification time."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file())


def refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("overparam-lit: error: ") and err.count("\n") == 1
    return err


def test_second_fit_into_a_busy_folder_is_refused_and_a_dead_ones_lock_is_taken_over(
        tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "overparam_lit", "fit", *COMMON, "--trainer.max_epochs",
                              "5000", "--trainer.default_root_dir", str(run)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock, deadline = run / "run.lock", time.time() + 120
        while time.time() < deadline and not (run / "config.yaml").exists():
            time.sleep(0.05)
        info = json.loads(lock.read_text())
        assert info["pid"] == first.pid and info["host"]
        for extra in ([], ["--overwrite", "true"]):  # refused for being busy, whatever else is asked
            err = refused(capsys, ["fit", *COMMON, "--trainer.max_epochs", "3", "--trainer.default_root_dir",
                                   str(run), *extra])
            assert "in use by another fit" in err and f"pid {first.pid}" in err and str(lock) in err
        assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 5000
        assert not list(run.glob("config.yaml.*.bak"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid  # the dead fit's lock file is still there
    main(["fit", *COMMON, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run),
          "--overwrite", "true"])  # the dead process's lock is taken over
    assert not lock.exists()  # released at the end
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert [r["epoch"] for r in RunFolder(run).read_metrics() if r.get("val/acc")] == ["0", "1"]


def test_lock_is_inherited_by_child_processes_only(tmp_path: Path) -> None:
    """DDP children of the holder inherit LOCK_ENV and accept the lock; anyone else is refused."""
    path = tmp_path / "run" / "run.lock"
    code = ("import sys; from overparam_lit.runfolder import RunLock\n"
            "from overparam_lit.utils import ConfigError\n"
            f"lock = RunLock({str(path)!r})\n"
            "try:\n    lock.acquire()\nexcept ConfigError as e:\n    print('REFUSED', e)\n"
            "else:\n    print('INHERITED' if lock.inherited else 'HELD')\n")
    holder = RunLock(path).acquire()
    try:
        assert holder.held and os.environ[LOCK_ENV].endswith(holder.token)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert child.stdout.startswith("INHERITED"), child.stderr[-2000:]
        env.pop(LOCK_ENV)
        stranger = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert stranger.stdout.startswith("REFUSED") and f"pid {os.getpid()}" in stranger.stdout
        assert RunLock(path).acquire().inherited  # this process carries the token, as its children do
    finally:
        holder.release()
    assert not path.exists() and LOCK_ENV not in os.environ
    with RunLock(path) as again:
        assert again.held


def test_new_fit_into_a_finished_run_is_refused_and_touches_nothing(tmp_path: Path, capsys) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    main(["fit", *COMMON, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run)])
    main(["fit", *COMMON, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(other)])
    before = snapshot(run)
    again = ["fit", *COMMON, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run)]
    err = refused(capsys, again)
    assert "already holds a run" in err and "config.yaml" in err
    assert f"--ckpt_path {run / 'checkpoints' / 'last.ckpt'}" in err and "--overwrite true" in err
    # a checkpoint of another run does not make it a resume of this one
    err = refused(capsys, [*again, "--ckpt_path", str(other / "checkpoints" / "last.ckpt")])
    assert "points outside this folder" in err
    # resuming with --overwrite would delete the checkpoint itself
    own = str(run / "checkpoints" / "last.ckpt")
    err = refused(capsys, [*again, "--ckpt_path", own, "--overwrite", "true"])
    assert "--overwrite would delete the checkpoint" in err
    assert snapshot(run) == before  # no .bak, no last-v1.ckpt, no appended rows, no new hparams.yaml


def test_overwrite_clears_the_old_runs_artifacts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    imp = ["-c", str(REPO / "callbacks" / "imp.yaml"), "--trainer.max_epochs", "1",
           "--data.train_subset", "400", "--trainer.default_root_dir", str(run)]
    main(["fit", *COMMON, *imp, "--trainer.callbacks.levels", "3"])
    folder = RunFolder(run)
    assert [p.name for p in folder.imp_levels()] == ["level_00", "level_01", "level_02", "level_03"]
    (run / "notes.txt").write_text("mine")  # not a run artifact: kept
    main(["fit", *COMMON, *imp, "--trainer.callbacks.levels", "1", "--overwrite", "true"])
    assert [p.name for p in folder.imp_levels()] == ["level_00", "level_01"]  # no stale level_02/03
    summary = folder.read_json(folder.imp_summary)
    assert [lv["level"] for lv in summary["levels"]] == [0, 1]
    rows = folder.read_metrics()
    assert [r["epoch"] for r in rows if r.get("val/acc")] == ["0", "1"]  # only the new fit's rows
    assert sorted({r["imp/level"] for r in rows if r.get("imp/level")}) == ["0.0", "1.0"]
    assert not folder.config_backups() and (run / "notes.txt").read_text() == "mine"
    assert yaml.safe_load(folder.config_yaml.read_text())["overwrite"] is False  # rerunning it is safe
    # every artifact the callback wrote is where RunFolder names it
    for level in (0, 1):
        for path in (folder.imp_mask(level), folder.imp_rewind(level), folder.imp_final(level),
                     folder.imp_sparsity(level), folder.imp_metrics(level)):
            assert path.is_file(), path
    assert folder.read_json(folder.imp_metrics(1))["density"] == pytest.approx(0.8, abs=0.01)


def test_default_folder_never_collides_and_a_refused_launch_leaves_none(
        tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.app.time, "strftime", lambda fmt, *args: "20250101-000000")
    taken = tmp_path / "runs" / "20250101-000000"
    taken.mkdir(parents=True)
    (taken / "metrics.csv").write_text("step\n0\n")
    main(["fit", *COMMON, "--trainer.max_epochs", "1"])
    fresh = tmp_path / "runs" / "20250101-000000-1"
    assert (fresh / "config.yaml").is_file() and (fresh / "checkpoints" / "last.ckpt").is_file()
    assert (taken / "metrics.csv").read_text() == "step\n0\n"
    assert cli.RUN_DIR_ENV not in os.environ  # a later fit in this process picks its own folder
    opt = "--model.init_args.optimizer"
    sgd = [opt, "torch.optim.SGD", f"{opt}.init_args.lr", "0.1", f"{opt}.init_args.nesterov", "true"]
    err = refused(capsys, ["fit", *COMMON, *sgd, "--trainer.max_epochs", "1"])
    assert "optimizer settings were refused" in err and "Nesterov" in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["20250101-000000", "20250101-000000-1"]


def test_run_folder_names() -> None:
    f = RunFolder("r")
    assert f.config_yaml == Path("r/config.yaml") and f.metrics_csv == Path("r/metrics.csv")
    assert f.members_csv == Path("r/members.csv") and f.hparams_yaml == Path("r/hparams.yaml")
    assert f.last_ckpt == Path("r/checkpoints/last.ckpt")
    assert f.epoch_ckpt(7) == Path("r/checkpoints/epoch=007.ckpt")
    assert f.imp_mask(3) == Path("r/imp/level_03/mask.pt") and f.imp_pruned_net(0).name == "pruned_net.pt"
    assert f.imp_summary.name == "summary.json" and f.ticket_result == Path("r/imp/ticket_result.json")
    assert f.hessian_probe(12) == Path("r/hessian/probe_step00000012.npz")
    assert f.hessian_density(12).name == "density_step00000012.png"
    assert f.regions_maps(5) == Path("r/regions/maps_epoch0005.npz")
    assert f.regions_picture(5).name == "epoch0005.png"
    assert [p.name for p in (f.regions_bank, f.regions_history, f.regions_overview, f.regions_filmstrip_png,
                             f.regions_filmstrip_gif)] == ["bank.pt", "history.json", "overview.png",
                                                           "filmstrip.png", "filmstrip.gif"]
    assert f.wandb == Path("r/wandb") and f.done_json == Path("r/done.json")
    assert f.lock_file.name == "run.lock"

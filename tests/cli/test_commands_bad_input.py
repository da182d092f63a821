"""`sweep`, `plot` and `export` on bad input meet `fit`'s standard: one paragraph on stderr, message
first, exit code 2, and nothing written or changed before the input is accepted. A sweep folder
takes one sweep at a time (its own lock) and only its own study; a fit stopped by the sweep's
signal is not recorded as finished and a rerun resumes it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from overparam_lit.cli import main as cli_main
from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.sweep import fork_available

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}

SLOW = '''
import time
import lightning as L


class Slow(L.Callback):
    """Sleeps after every training epoch, so that a tiny fit lasts long enough to be stopped."""
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        time.sleep(self.seconds)
'''


def tiny_study(folder: Path, name: str = "study.yaml", figure: bool = True, **trainer) -> Path:
    """The double-descent study shrunk to 2 widths x 1 seed, 1 epoch on 200 samples, with
    checkpoints (for export) and W&B off."""
    cfg = yaml.safe_load((REPO / "configs" / "study_mnist1d_double_descent.yaml").read_text())
    cfg["data"]["init_args"]["train_subset"] = 200
    cfg["trainer"].update({"max_epochs": 1, "check_val_every_n_epoch": 1, "enable_checkpointing": True,
                           **trainer})
    cfg["wandb"] = {"mode": "disabled"}
    cfg["sweep"] = {"name": "dd-tiny", "grid": {"model.init_args.width": [4, 8], "seed_everything": [0]},
                    "pack": "all", **({"figure": "double-descent"} if figure else {})}
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sweep_process(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "overparam_lit", "sweep", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """A finished tiny double-descent sweep folder ``S`` (one member fit of widths 4 and 8), made
    once for the module; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("dd")
    config = tiny_study(root)
    proc = subprocess.run([sys.executable, "-m", "overparam_lit", "sweep", "-c", str(config), "--out", "S"],
                          cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = SweepFolder(root / "S")
    fit = RunFolder(sweep.fit_dir(json.loads(sweep.spec.read_text())["fits"][0]["name"]))
    return {"root": root, "config": config, "S": sweep.root, "fit": fit, "stdout": proc.stdout}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` (the folder too) with its size and modification time."""
    paths = [folder, *folder.rglob("*")] if folder.exists() else []
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in paths}


def refused(capsys, argv: list[str], *words: str) -> str:
    """Run ``overparam-lit ARGV``: exit 2, nothing on stdout, one line on stderr that starts with
    the command's error prefix and holds ``words``; returns the message."""
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"overparam-lit {argv[0]}: error: "), err
    assert "Traceback" not in err and "usage:" not in err and not out.strip(), (out, err)
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def copy(finished: dict, tmp_path: Path) -> Path:
    target = tmp_path / "S"
    shutil.copytree(finished["S"], target)
    return target


# ---- sweep ----------------------------------------------------------------------------------
def test_sweep_ends_naming_plot_and_report(finished: dict, tmp_path: Path, capsys) -> None:
    assert "figure: overparam-lit plot double-descent S; page: overparam-lit report S" in finished["stdout"]
    assert finished["fit"].done_json.is_file()
    plain = tiny_study(tmp_path, figure=False)  # a study without a figure still names the report
    assert cli_main(["sweep", "-c", str(plain), "--out", str(tmp_path / "T")]) == 0
    out = capsys.readouterr().out
    assert f"[sweep] page: overparam-lit report {tmp_path / 'T'}" in out and "overparam-lit plot" not in out


def test_sweep_out_is_a_file(tmp_path: Path, finished: dict, capsys) -> None:
    target = tmp_path / "afile"
    target.write_text("mine\n")
    before = snapshot(tmp_path)
    refused(capsys, ["sweep", "-c", str(finished["config"]), "--out", str(target)], "--out is a file")
    assert snapshot(tmp_path) == before and target.read_text() == "mine\n"


def test_sweep_without_out_names_the_option(finished: dict, capsys) -> None:
    refused(capsys, ["sweep", "-c", str(finished["config"])], "--out is missing",
            "Example: overparam-lit sweep -c ")
    refused(capsys, ["sweep", "-c", str(finished["config"]), "--out", "x", "--bogus"],
            "unrecognized arguments: --bogus", "Example:")


def test_sweep_workers_zero(tmp_path: Path, finished: dict, capsys) -> None:
    refused(capsys, ["sweep", "-c", str(finished["config"]), "--out", str(tmp_path / "W"), "--workers", "0"],
            "--workers must be >= 1", "(got 0)")
    assert not (tmp_path / "W").exists()


def test_sweep_of_another_study_is_refused_and_its_own_resumes(tmp_path: Path, finished: dict,
                                                                  capsys) -> None:
    sweep = copy(finished, tmp_path)
    other = yaml.safe_load(finished["config"].read_text())
    other["sweep"]["grid"]["model.init_args.width"] = [4, 16]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    ts = REPO / "configs" / "study_teacher_student_success.yaml"
    before = snapshot(sweep)
    for config in (ts, tmp_path / "other.yaml"):
        message = refused(capsys, ["sweep", "-c", str(config), "--out", str(sweep)],
                          "--out holds another study's sweep ('dd-tiny'", "its config files differ",
                          "a new --out folder")
        assert f"overparam-lit sweep -c {finished['config']}" in message
    shutil.copy(tmp_path / "other.yaml", tmp_path / "study.yaml")  # same file name, another grid
    refused(capsys, ["sweep", "-c", str(tmp_path / "study.yaml"), "--out", str(sweep)],
            "the fits' arguments differ")
    refused(capsys, ["sweep", "-c", str(finished["config"]), "--out", str(sweep), "--set",
                     "trainer.max_epochs=3"], "another study's sweep")
    assert snapshot(sweep) == before
    # the same study resumes: its finished fit is kept
    for argv in (["-c", str(finished["config"])], []):
        assert cli_main(["sweep", *argv, "--out", str(sweep)]) == 0
        assert "1 already finished, 0 to run" in capsys.readouterr().out


def test_sweep_out_of_a_fit_run_is_refused(tmp_path: Path, finished: dict, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished["fit"].root, run)
    before = snapshot(run)
    refused(capsys, ["sweep", "-c", str(finished["config"]), "--out", str(run)],
            "--out holds the run of one `overparam-lit fit`")
    assert snapshot(run) == before


@pytest.mark.parametrize(("grid", "words"), [
    ("model.init_args.width=0,4", ["widths [0, 4]", "must be a positive integer"]),
    ("model.init_args.optimizer.init_args.lr=-1", ["model.init_args.optimizer.init_args.lr=-1",
                                                   "the learning rate must be > 0"]),
    ("model.init_args.widht=4", ["model.init_args.widht=4", "MLP has no option 'widht'"]),
])
def test_grid_is_checked_before_the_first_fit(tmp_path: Path, finished: dict, capsys, grid: str,
                                              words: list[str]) -> None:
    out = tmp_path / "G"
    refused(capsys, ["sweep", "-c", str(finished["config"]), "--out", str(out), "--grid", grid],
            "the grid point", "is refused by `overparam-lit fit`", "no fit was started", *words)
    assert not out.exists()


# ---- plot -----------------------------------------------------------------------------------
def test_plot_out_in_a_missing_folder(finished: dict, tmp_path: Path, capsys) -> None:
    before = snapshot(finished["S"])
    refused(capsys, ["plot", "double-descent", str(finished["S"]), "--out", str(tmp_path / "nope" / "x.png")],
            "the folder of --out does not exist")
    if Path("/proc").is_dir():
        refused(capsys, ["plot", "double-descent", str(finished["S"]), "--out", "/proc/nope/x.png"],
                "the folder of --out does not exist")
    (tmp_path / "dir.png").mkdir()
    refused(capsys, ["plot", "double-descent", str(finished["S"]), "--out", str(tmp_path / "dir.png")],
            "--out is a folder")
    assert snapshot(finished["S"]) == before and not (tmp_path / "nope").exists()


def test_plot_results_csv_of_random_bytes(tmp_path: Path, finished: dict, capsys) -> None:
    sweep = copy(finished, tmp_path)
    (sweep / "results.csv").write_bytes(bytes(range(128, 256)) * 3)
    before = snapshot(sweep)
    refused(capsys, ["plot", "double-descent", str(sweep)], "results.csv is not text",
            f"overparam-lit sweep --out {sweep} --collect")
    assert snapshot(sweep) == before
    (sweep / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(sweep)
    refused(capsys, ["plot", "double-descent", str(sweep)],
            "results.csv lacks the column(s) ['fit', 'status']")
    assert snapshot(sweep) == before


def test_broken_sweep_json_is_refused_by_sweep_and_plot(tmp_path: Path, finished: dict, capsys) -> None:
    sweep = copy(finished, tmp_path)
    (sweep / "sweep.json").write_text('{"fits": [')
    before = snapshot(sweep)
    for argv in (["sweep", "-c", str(finished["config"]), "--out", str(sweep)],
                 ["sweep", "--out", str(sweep), "--collect"],
                 ["plot", "double-descent", str(sweep)], ["plot", str(sweep)]):
        refused(capsys, argv, "sweep.json is not valid JSON", "line 1")
    assert snapshot(sweep) == before
    (sweep / "sweep.json").write_bytes(b"\xff\xfe")
    refused(capsys, ["plot", str(sweep)], "sweep.json is not text")
    (sweep / "sweep.json").write_text("[1, 2]")
    refused(capsys, ["plot", str(sweep)], "sweep.json does not hold a sweep's plan")
    assert {k for k in snapshot(sweep)} == set(before)


# ---- export ---------------------------------------------------------------------------------
def test_export_onto_a_run_checkpoint_is_refused(finished: dict, capsys) -> None:
    fit = finished["fit"]
    before = snapshot(fit.root)
    last = str(fit.last_ckpt)
    refused(capsys, ["export", last, "--member", "0", "--out", last],
            "--out is the checkpoint being exported")
    for out in (fit.checkpoints / "member0.ckpt", *[p for p in fit.checkpoint_files() if p != fit.last_ckpt]):
        refused(capsys, ["export", last, "--member", "0", "--out", str(out)], "run folder's checkpoints/")
    assert snapshot(fit.root) == before


def test_export_out_in_a_missing_folder(finished: dict, tmp_path: Path, capsys) -> None:
    last = str(finished["fit"].last_ckpt)
    refused(capsys, ["export", last, "--member", "0", "--out", str(tmp_path / "nope" / "m.ckpt")],
            "the folder of --out does not exist")
    if Path("/proc").is_dir():
        refused(capsys, ["export", last, "--member", "0", "--out", "/proc/nope/m.ckpt"],
                "the folder of --out does not exist")
    assert not (tmp_path / "nope").exists()
    assert cli_main(["export", last, "--member", "1", "--out", str(tmp_path / "m1.ckpt")]) == 0  # a good one
    assert (tmp_path / "m1.ckpt").is_file()


def test_export_without_member_names_the_option(finished: dict, tmp_path: Path, capsys) -> None:
    last = str(finished["fit"].last_ckpt)
    refused(capsys, ["export", last, "--out", str(tmp_path / "m.ckpt")], "--member is missing",
            "overparam-lit export runs/x/checkpoints/last.ckpt --member 3 --out member3.ckpt")
    refused(capsys, ["export", last, "--member", "0"], "--out is missing")
    refused(capsys, ["export", last, "--member", "x", "--out", "m.ckpt"], "invalid int value: 'x'",
            "Example:")
    assert not any(tmp_path.iterdir())


# ---- a sweep folder in use, and a sweep stopped by a signal -------------------------------------
def slow_study(folder: Path, epochs: int, seconds: float) -> Path:
    (folder / "hooks.py").write_text(SLOW)
    config = tiny_study(folder, max_epochs=epochs, check_val_every_n_epoch=1000,
                        callbacks=[{"class_path": "hooks.Slow", "init_args": {"seconds": seconds}}])
    return config


def wait_for(root: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until a file matching ``pattern`` exists under ``root`` (while ``proc`` runs)."""
    deadline = time.monotonic() + timeout
    while not root.is_dir() or not list(root.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {root / pattern} after {timeout} s"
        time.sleep(0.05)


def test_second_sweep_on_a_busy_folder_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = slow_study(tmp_path, epochs=12, seconds=0.4)
    first = sweep_process(tmp_path, "-c", str(config), "--out", "S")
    try:
        sweep = SweepFolder(tmp_path / "S")
        wait_for(sweep.root, "points/*/checkpoints/last.ckpt", first)  # the fit has trained an epoch
        top = {p.name: p.stat().st_mtime_ns for p in sweep.root.iterdir() if p.is_file()}
        logs = sorted(p.name for p in (sweep.root / "logs").iterdir())
        for extra in ([], ["--fit", json.loads(sweep.spec.read_text())["fits"][0]["name"]]):
            message = refused(capsys, ["sweep", "-c", str(config), "--out", "S", *extra],
                              "another `overparam-lit sweep` is running in this sweep folder",
                              f"pid {first.pid} on host ")
            assert "sweep.lock" in message
        assert {p.name: p.stat().st_mtime_ns for p in sweep.root.iterdir() if p.is_file()} == top
        assert sorted(p.name for p in (sweep.root / "logs").iterdir()) == logs  # no failed.json
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, out + err
    with open(sweep.fits, newline="") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["done"]
    assert not sweep.lock_file.exists() and not list((sweep.root / "logs").glob("*.failed.json"))


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_leaves_the_fit_unfinished_and_a_rerun_resumes_it(tmp_path: Path) -> None:
    config = slow_study(tmp_path, epochs=12, seconds=0.4)
    args = ["-c", str(config), "--out", "S"]
    first = sweep_process(tmp_path, *args)
    sweep = SweepFolder(tmp_path / "S")
    try:
        wait_for(sweep.root, "points/*/checkpoints/last.ckpt", first)  # the fit has trained an epoch
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130, out + err
    fit = RunFolder(next(sweep.points.iterdir()))
    assert "stopped" in out and not fit.done_json.exists(), out + err
    assert not list((sweep.root / "logs").glob("*.failed.json")) and not sweep.lock_file.exists()
    with open(sweep.fits, newline="") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["stopped"]
    assert fit.resume_checkpoint() is not None and not fit.epoch_ckpt(11).exists()  # stopped early
    again = subprocess.run([sys.executable, "-m", "overparam_lit", "sweep", *args], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(resuming)" in again.stdout and fit.done_json.is_file() and fit.epoch_ckpt(11).is_file()


@pytest.mark.skipif(not fork_available(), reason="the fork-launched fits are Linux only")
def test_grid_check_leaves_the_sweep_process_single_threaded(tmp_path: Path, finished: dict) -> None:
    """The grid is checked in a forked child, so the sweep process can still fork its fit servers."""
    code = ("import threading, sys; from overparam_lit.studies.sweep import fit_problems; "
            f"p = fit_problems([['-c', {str(finished['config'])!r}]]); "
            "print(p, threading.active_count()); sys.exit(0 if p == [None] else 1)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith(" 1"), proc.stdout + proc.stderr

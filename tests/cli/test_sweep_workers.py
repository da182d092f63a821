"""``overparam-lit sweep`` forks each local fit from a worker that imported once: the forked fits
give the rows of fits started as new processes, each fit starts from fresh process state, a
failing fit is reported with its message while the next one runs, and a fit killed mid-run
(SIGKILL) is resumed from its last checkpoint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.sweep import fork_available
from overparam_lit.studies.sweep import main as sweep_main
from overparam_lit.testing import TINY_STUDY_BASE

pytestmark = pytest.mark.skipif(not fork_available(), reason="fits are forked on Linux only")

BASE = TINY_STUDY_BASE

HOOKS = '''
import json, os, signal
from pathlib import Path
import lightning as L

FITS_IN_THIS_PROCESS = 0


class Record(L.Callback):
    """Writes what a fit found at its start: its process and how many fits this process ran."""
    def on_train_start(self, trainer, pl_module) -> None:
        global FITS_IN_THIS_PROCESS
        FITS_IN_THIS_PROCESS += 1
        Path(trainer.default_root_dir, "process.json").write_text(json.dumps(
            {"pid": os.getpid(), "fits": FITS_IN_THIS_PROCESS}))


class CrashAt(L.Callback):
    """Raises in the fit of one width."""
    def __init__(self, width: int) -> None:
        self.width = width
    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.width == self.width:
            raise RuntimeError(f"injected crash at width {self.width}")


class KillOnce(L.Callback):
    """SIGKILLs its own process at the start of ``epoch`` when the flag file exists (and removes it)."""
    def __init__(self, flag: str, epoch: int) -> None:
        self.flag, self.epoch = Path(flag), epoch
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and self.flag.exists():
            self.flag.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
'''


def study(tmp_path: Path, grid: dict, callbacks: list | None = None, max_epochs: int = 2, **block) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    cfg["trainer"]["max_epochs"] = max_epochs
    if callbacks:
        cfg["trainer"]["callbacks"] = callbacks
    cfg["sweep"] = {"grid": grid, **block}
    (tmp_path / "hooks.py").write_text(HOOKS)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def sweep_process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m overparam_lit sweep ARGS` as its own process: it forks the fit servers itself."""
    return subprocess.run([sys.executable, "-m", "overparam_lit", "sweep", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_forked_fits_give_the_rows_of_new_processes(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = study(tmp_path, {"model.init_args.width": [2, 4], "seed_everything": [0, 1]}, pack="seeds")
    res = sweep_process(tmp_path, "-c", str(cfg), "--out", "forked", "--workers", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sweep_main(["-c", str(cfg), "--out", "new", "--workers", "2", "--launch", "process"]) == 0
    forked, new = read_csv(tmp_path / "forked" / "results.csv"), read_csv(tmp_path / "new" / "results.csv")
    assert len(forked) == 4
    for row in forked + new:
        assert row.pop("seconds") and row["status"] == "done"
    assert forked == new
    # the fit's output goes to its attempt log, after the command line, as before
    log = SweepFolder(tmp_path / "forked").logs_of("width-4_seeds-0.1")[0].read_text()
    assert log.startswith("$ ") and "-m overparam_lit fit" in log.splitlines()[0]
    assert "Run folder:" in log and "Final:" in log


def test_failing_forked_fit_is_reported_and_the_next_one_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    hooks = [{"class_path": "hooks.Record"}, {"class_path": "hooks.CrashAt", "init_args": {"width": 3}}]
    cfg = study(tmp_path, {"model.init_args.width": [3, 2, 1]}, callbacks=hooks, max_epochs=1)
    out = tmp_path / "s"
    argv = ["-c", str(cfg), "--out", str(out), "--workers", "1", "--retries", "0", "--launch", "fork"]
    assert sweep_main(argv) == 1
    log = capsys.readouterr().out
    assert "FAIL width-3 (attempt 1, exit 1)" in log and "RuntimeError: injected crash at width 3" in log
    assert "done width-2" in log and "done width-1" in log
    folder = SweepFolder(out)
    assert json.loads(folder.failed("width-3").read_text())["exit_code"] == 1
    assert "Traceback" in folder.logs_of("width-3")[0].read_text()
    assert {r["fit"]: r["status"] for r in read_csv(folder.results)} == {
        "width-3": "failed", "width-2": "done", "width-1": "done"}
    # one worker ran all three fits, each in its own fresh process
    seen = [json.loads((folder.fit_dir(f"width-{w}") / "process.json").read_text()) for w in (3, 2, 1)]
    assert [s["fits"] for s in seen] == [1, 1, 1]
    assert len({s["pid"] for s in seen} | {os.getpid()}) == 4


def test_killed_forked_fit_resumes(tmp_path: Path) -> None:
    (tmp_path / "flag").write_text("")
    kill = {"class_path": "hooks.KillOnce", "init_args": {"flag": str(tmp_path / "flag"), "epoch": 2}}
    cfg = study(tmp_path, {"model.init_args.width": [2]}, callbacks=[kill], max_epochs=4)
    res = sweep_process(tmp_path, "-c", str(cfg), "--out", "s", "--workers", "1", "--retries", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"FAIL width-2 (attempt 1, exit -{int(__import__('signal').SIGKILL)})" in res.stdout
    assert "width-2 (resuming), 1 member(s), attempt 2" in res.stdout
    assert not (tmp_path / "flag").exists()
    run = RunFolder(SweepFolder(tmp_path / "s").fit_dir("width-2"))
    done = run.read_done()
    assert done["attempts"] == 2 and "--ckpt_path" in done["command"] and done["metrics"]["epoch"] == 3
    rows = run.read_metrics()
    assert [int(r["epoch"]) for r in rows if r.get("train/loss")] == [0, 1, 2, 3]  # every epoch once
    assert len([r for r in rows if r.get("model/num_params")]) == 1


def test_forked_fits_logging_to_wandb_one_after_another(tmp_path: Path) -> None:
    """Two member fits in one worker, each writing a W&B table (offline): the second fit's table
    must not find W&B's temporary media folder deleted by the first fit's exit."""
    cfg = study(tmp_path, {"model.init_args.width": [2, 3], "seed_everything": [0, 1]}, pack="seeds")
    text = yaml.safe_load(cfg.read_text())
    text["wandb"] = {"mode": "offline"}
    cfg.write_text(yaml.safe_dump(text, sort_keys=False))
    res = sweep_process(tmp_path, "-c", str(cfg), "--out", "s", "--workers", "1", "--retries", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["status"] for r in read_csv(tmp_path / "s" / "results.csv")] == ["done"] * 4
    for log in (tmp_path / "s" / "logs").iterdir():
        assert "Traceback" not in log.read_text(), log.read_text()[-2000:]


@pytest.mark.parametrize("base, fit_args, env, expect", [
    ("wandb:\n  mode: disabled\n", [[], []], {}, False),
    ("wandb:\n  mode: disabled\n", [[], ["--wandb.mode", "offline"]], {}, True),  # one fit logs
    ("seed_everything: 0\n", [[]], {"WANDB_MODE": "disabled"}, False),
    ("seed_everything: 0\n", [[]], {"WANDB_MODE": "offline"}, True),
])
def test_fit_servers_preload_wandb_only_where_a_fit_logs_to_it(tmp_path: Path, monkeypatch, base: str,
                                                               fit_args: list[list[str]],
                                                               env: dict[str, str], expect: bool) -> None:
    """The sweep reads each fit's W&B mode from its configs and its own arguments."""
    from types import SimpleNamespace

    from overparam_lit.studies.sweep.local import LocalPool

    cfg = tmp_path / "study.yaml"
    cfg.write_text(base)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pool = LocalPool.__new__(LocalPool)
    pool.plan = SimpleNamespace(configs=[cfg], fits=[SimpleNamespace(args=a) for a in fit_args])
    assert pool._uses_wandb() is expect

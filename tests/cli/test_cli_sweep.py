"""``overparam-lit sweep`` with guarded run folders: each fit's command resumes from the newest intact
checkpoint, starts over (``--overwrite true``) when an attempt left a run without one, and is a plain
fit in an empty folder; the command a sweep builds is one the fit CLI accepts. A fit whose training
loss diverged is recorded as failed and not retried."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import yaml

from overparam_lit.cli import main
from overparam_lit.runfolder import RunFolder
from overparam_lit.stopping import DIVERGED_EXIT_CODE
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.sweep import Sweep, build_parser, resume_args
from overparam_lit.studies.sweep import main as sweep_main
from overparam_lit.testing import TINY_STUDY_BASE

REPO = Path(__file__).resolve().parents[2]


def test_fit_commands_follow_the_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "study.yaml"
    base = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    base["sweep"] = {"grid": {"model.init_args.width": [8, 16]}}
    cfg.write_text(yaml.safe_dump(base))
    sweep = Sweep(build_parser().parse_args(["-c", str(cfg), "--out", str(tmp_path / "s"),
                                             "--set", "wandb.mode=disabled"]))
    f8, f16 = sweep.plan.fits
    assert resume_args(f8.folder) == [] and sweep.command(f8) == sweep.plan.command(f8)  # nothing there yet
    # a finished width-8 run: its last.ckpt resumes it
    cmd = sweep.plan.command(f8)
    main(cmd[3:] + ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])
    folder = RunFolder(f8.folder)
    assert sweep.command(f8)[-2:] == ["--ckpt_path", str(folder.last_ckpt)]
    # a damaged last.ckpt: the newest intact checkpoint resumes it
    shutil.copy(folder.last_ckpt, folder.epoch_ckpt(0))
    folder.last_ckpt.write_bytes(b"")
    assert resume_args(f8.folder) == ["--ckpt_path", str(folder.epoch_ckpt(0))]
    # --fresh starts over
    assert resume_args(f8.folder, fresh=True) == ["--overwrite", "true"]
    # an attempt that died before its first checkpoint left config.yaml only: start over
    f16.folder.mkdir(parents=True)
    (f16.folder / "notes.txt").write_text("no run artifact\n")
    assert resume_args(f16.folder) == []
    RunFolder(f16.folder).config_yaml.write_text("seed_everything: 0\n")
    assert sweep.command(f16)[-2:] == ["--overwrite", "true"]


def test_a_diverged_fit_fails_without_a_retry(tmp_path: Path, capsys) -> None:
    """SGD at learning rate 1e30 on the tiny MLP: the second step's logits overflow float32 and the
    training loss is NaN, so the fit exits with DIVERGED_EXIT_CODE. The same settings would diverge
    again, so the sweep records the fit as failed after one attempt despite ``--retries 2``."""
    cfg = yaml.safe_load(yaml.safe_dump(TINY_STUDY_BASE))
    cfg["model"]["init_args"]["optimizer"] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
    cfg["sweep"] = {"grid": {"model.init_args.optimizer.init_args.lr": [1.0e30]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "s"
    assert sweep_main(["-c", str(path), "--out", str(out), "--workers", "1", "--retries", "2"]) == 1
    log = capsys.readouterr().out
    folder = SweepFolder(out)
    (fit,) = [f["name"] for f in json.loads(folder.spec.read_text())["fits"]]
    assert f"FAIL {fit} (attempt 1, exit {DIVERGED_EXIT_CODE})" in log and "attempt 2" not in log, log
    failed = json.loads(folder.failed(fit).read_text())
    assert failed["exit_code"] == DIVERGED_EXIT_CODE == 3 and failed["attempts"] == 1
    assert len(folder.logs_of(fit)) == 1 and "training diverged" in folder.logs_of(fit)[0].read_text()
    assert not RunFolder(folder.fit_dir(fit)).done_json.exists()
    with open(folder.fits, newline="") as fh:
        assert [(r["fit"], r["status"], r["attempts"]) for r in csv.DictReader(fh)] == [(fit, "failed", "1")]

"""``overparam-lit sweep`` with guarded run folders: each fit's command resumes from the newest intact
checkpoint, starts over (``--overwrite true``) when an attempt left a run without one, and is a plain
fit in an empty folder; the command a sweep builds is one the fit CLI accepts."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from overparam_lit.cli import main
from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.sweep import Sweep, build_parser, resume_args

REPO = Path(__file__).resolve().parents[1]


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

"""scripts/sweep.py with guarded run folders: each point's command resumes from the newest intact
checkpoint, starts over (``--overwrite true``) when an attempt left a run without one, and is a
plain fit in an empty folder."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from overparam_lit.cli import main
from overparam_lit.runfolder import RunFolder

REPO = Path(__file__).resolve().parents[1]


def sweep_module():
    spec = importlib.util.spec_from_file_location("_test_cli_sweep", REPO / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_point_commands_follow_the_folder(tmp_path: Path) -> None:
    sweep = sweep_module()
    argv = ["-c", str(REPO / "configs" / "quickstart.yaml"), "--grid", "model.init_args.width=8,16",
            "--out", str(tmp_path / "s"), "--set", "wandb.mode=disabled"]
    s = sweep.Sweep(sweep.build_parser().parse_args(argv))
    p8, p16 = s.points
    assert "--ckpt_path" not in s.command(p8) and "--overwrite" not in s.command(p8)  # nothing there yet
    # a finished width-8 run: its last.ckpt resumes it
    d8 = s.point_dir(p8)
    main(["fit", *s.command(p8)[4:], "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])
    cmd = s.command(p8)
    assert cmd[cmd.index("--ckpt_path") + 1] == str(RunFolder(d8).last_ckpt) and "--overwrite" not in cmd
    # a damaged last.ckpt: the newest intact checkpoint resumes it
    shutil.copy(d8 / "checkpoints" / "last.ckpt", d8 / "checkpoints" / "epoch=000.ckpt")
    (d8 / "checkpoints" / "last.ckpt").write_bytes(b"")
    cmd = s.command(p8)
    assert cmd[cmd.index("--ckpt_path") + 1] == str(d8 / "checkpoints" / "epoch=000.ckpt")
    # --fresh starts over
    fresh = sweep.Sweep(sweep.build_parser().parse_args([*argv, "--fresh"]))
    assert fresh.command(p8)[-2:] == ["--overwrite", "true"] and "--ckpt_path" not in fresh.command(p8)
    # an attempt that died before its first checkpoint left config.yaml only: start over
    d16 = s.point_dir(p16)
    d16.mkdir(parents=True)
    (d16 / "sweep_attempt1.log").write_text("crashed\n")  # the sweep's own log is no run artifact
    assert "--overwrite" not in s.command(p16)
    (d16 / "config.yaml").write_text("seed_everything: 0\n")
    assert s.command(p16)[-2:] == ["--overwrite", "true"]

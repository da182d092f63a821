"""A local sweep's fit stopped by a signal from outside (exit 75, ``REQUEUE_EXIT_CODE``) is
``stopped``: not done, not retried as a failure, and a rerun resumes it to done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from overparam_lit.runfolder import RunFolder
from overparam_lit.stopping import REQUEUE_EXIT_CODE
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.testing import TINY_STUDY_BASE
from overparam_lit.utils import read_csv_rows

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def test_fit_stopped_by_a_signal_is_resumed_not_retried(tmp_path: Path) -> None:
    cfg = yaml.safe_load(yaml.safe_dump(TINY_STUDY_BASE))
    cfg["trainer"]["max_epochs"] = 60
    cfg["sweep"] = {"grid": {"model.init_args.width": [8]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "overparam_lit", "sweep", "-c", str(path), "--out", str(out),
           "--workers", "1", "--retries", "2"]
    folder = RunFolder(SweepFolder(out).fit_dir("width-8"))
    sweep = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    end = time.time() + 120
    while not (folder.last_ckpt.is_file() and folder.lock_file.is_file()):
        assert sweep.poll() is None and time.time() < end, "the fit wrote no checkpoint"
        time.sleep(0.1)
    os.kill(json.loads(folder.lock_file.read_text())["pid"], signal.SIGTERM)  # the fit, not the sweep
    first = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == REQUEUE_EXIT_CODE, first[-2000:]
    assert "stopped width-8 (exit 75" in first and "FAIL" not in first, first[-2000:]
    assert [r["status"] for r in read_csv_rows(SweepFolder(out).fits)] == ["stopped"]
    assert not SweepFolder(out).failed("width-8").exists() and not folder.done_json.exists()
    assert len(SweepFolder(out).logs_of("width-8")) == 1  # not retried
    rerun = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "width-8 (resuming)" in rerun.stdout, rerun.stdout[-2000:]
    assert len([r for r in folder.read_metrics() if r.get("train/loss")]) == 60

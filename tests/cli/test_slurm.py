"""Sweeps and DDP against a real one-node SLURM on localhost (``.ci/slurm-up``): submitit jobs, a
time limit that requeues a fit until it is done, ``scancel``, a stopped sweep, and ``srun`` DDP.

The ``slurm_cluster`` fixture starts the cluster when ``sinfo`` does not answer; when it cannot, the
tests skip with the reason, or fail under CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from overparam_lit.runfolder import RunFolder
from overparam_lit.stopping import REQUEUE_EXIT_CODE
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.sweep import resume_args, slurm_states
from overparam_lit.testing import TINY_STUDY_BASE
from overparam_lit.utils import read_csv_rows

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
ONE_CPU = ["--slurm", "cpus_per_task=1"]
USABLE = ("idle", "mix", "alloc", "comp")  # sinfo's short node states that take jobs


def _node_state() -> str:
    if shutil.which("sinfo") is None:
        return ""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """The local cluster, up (``bash .ci/slurm-up`` when ``sinfo`` shows no usable node)."""
    if _node_state() not in USABLE:
        try:
            up = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up")], capture_output=True, text=True,
                                timeout=900)
            why = f"`bash .ci/slurm-up` exited {up.returncode}: {(up.stdout + up.stderr).strip()[-800:]}"
        except (OSError, subprocess.TimeoutExpired) as err:
            up, why = None, f"`bash .ci/slurm-up` did not finish: {err}"
        if up is None or up.returncode != 0 or _node_state() not in USABLE:
            (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no local SLURM cluster: {why}")


PAUSE = """
import time

import lightning as L


class PauseEachEpoch(L.Callback):
    def __init__(self, seconds: float = 0.1):
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module):
        time.sleep(self.seconds)
"""


def study(tmp_path: Path, widths: list[int], epochs: int) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY_STUDY_BASE))
    cfg["trainer"]["max_epochs"] = epochs
    cfg["sweep"] = {"grid": {"model.init_args.width": widths}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sweep_cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "overparam_lit", "sweep", "-c", str(cfg), "--out", str(out),
            "--executor", "slurm", *ONE_CPU, *extra]


def run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def wait_for(what: str, ready, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    end = time.time() + timeout
    while not ready():
        assert proc is None or proc.poll() is None, f"exited {proc.returncode} before {what}"
        assert time.time() < end, f"no {what} after {timeout} s"
        time.sleep(0.2)


def rows(folder: Path) -> list[dict[str, str]]:
    return RunFolder(folder).read_metrics()


def epochs_logged(folder: Path) -> int:
    try:
        return len([r for r in rows(folder) if r.get("train/loss")])
    except (OSError, ValueError):
        return 0


def fit_commands(logs: str) -> list[str]:
    """The fit commands a sweep's jobs ran (``[sweep] $ ...`` lines of their logs)."""
    return [line for line in logs.splitlines() if line.startswith("[sweep] $ ")]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(RunFolder(folder).last_ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_sweep_of_four_fits_through_submitit(slurm_cluster, tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = run(sweep_cmd(study(tmp_path, [2, 4, 6, 8], epochs=2), out, "--slurm", "timeout_min=5"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "submitted 4 job(s)" in proc.stdout and proc.stdout.count("[sweep] done ") == 4, proc.stdout
    results = read_csv_rows(SweepFolder(out).results)
    assert sorted(int(r["model.init_args.width"]) for r in results) == [2, 4, 6, 8]
    for r in results:  # each row holds its own fit's final test accuracy, as its metrics.csv logged it
        assert r["status"] == "done" and r["attempts"] == "1"
        folder = SweepFolder(out).fit_dir(r["fit"])
        test_acc = [float(m["test/acc"]) for m in rows(folder) if m.get("test/acc")]
        assert len(test_acc) == 1 and float(r["test/acc"]) == test_acc[0]
        assert RunFolder(folder).read_done()["metrics"]["test/acc"] == test_acc[0]


def test_time_limit_requeues_the_fit_until_done(slurm_cluster, tmp_path: Path) -> None:
    """A 1-minute time limit with submitit's pre-timeout signal asked 25 s before it: SLURM sends
    it 5 to 35 s into the job (its timer ticks every 30 s). The fit outlasts that on any CPU (200
    epochs, each held 0.2 s longer by a callback that changes no number), so it stops on the
    signal (exit 75), submitit requeues the job, and the requeued job resumes it from its
    checkpoint until it is done. Its rows and weights equal the same fit run locally in one go
    (run meanwhile, without the pause)."""
    epochs = 200
    cfg = study(tmp_path, [8], epochs=epochs)
    (tmp_path / "pause.py").write_text(PAUSE)  # the jobs run in tmp_path, which fits import from
    slow = yaml.safe_load(cfg.read_text())
    slow["trainer"]["callbacks"] = [{"class_path": "pause.PauseEachEpoch", "init_args": {"seconds": 0.2}}]
    slow_cfg = tmp_path / "study_slow.yaml"
    slow_cfg.write_text(yaml.safe_dump(slow, sort_keys=False))
    local = tmp_path / "local"
    reference_log = tmp_path / "local.log"
    with open(reference_log, "w") as fh:
        reference = subprocess.Popen(
            [sys.executable, "-m", "overparam_lit", "fit", "-c", str(cfg), "--sweep", "null",
             "--model.init_args.width", "8", "--trainer.default_root_dir", str(local)],
            cwd=tmp_path, env=ENV, stdout=fh, stderr=subprocess.STDOUT)
    out = tmp_path / "s"
    start = time.time()
    proc = run(sweep_cmd(slow_cfg, out, "--slurm", "timeout_min=1", "--slurm", "signal_delay_s=25"), tmp_path,
               timeout=400)
    seconds = time.time() - start
    assert reference.wait(timeout=300) == 0, reference_log.read_text()[-2000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    folder = SweepFolder(out).fit_dir("width-8")
    done = RunFolder(folder).read_done()
    requeues = done["attempts"] - 1
    logs = "".join(p.read_text() for p in sorted(SweepFolder(out).slurm.glob("*/*_log.out")))
    assert requeues >= 1, f"the fit ended before the pre-timeout signal\n{logs[-2000:]}"
    assert logs.count("requeueing the job") == requeues, logs[-3000:]
    runs = fit_commands(logs)
    assert len(runs) == requeues + 1 and all("--ckpt_path" in c for c in runs[1:])  # each requeue resumed
    print(f"\n[slurm] time-limit fit: {requeues} requeue(s), {seconds:.0f} s on SLURM")
    mine, theirs = rows(folder), rows(local)
    assert len(mine) == len(theirs) and mine == theirs  # every row, as strings: bit for bit
    w, ref = weights(folder), weights(local)
    assert w.keys() == ref.keys() and all(torch.equal(w[k], ref[k]) for k in w)


def test_stopped_sweep_cancels_its_jobs_and_scancel_is_reported(slurm_cluster, tmp_path: Path) -> None:
    """SIGTERM to a sweep that waits on its SLURM job: it cancels the job (the fit keeps its
    checkpoint) and exits promptly (130). A rerun resumes the fit; ``scancel`` of that job is
    reported as cancelled (exit 75, not a failure); a third run resumes it to done."""
    cfg = study(tmp_path, [8], epochs=150)
    out = tmp_path / "s"
    folder = SweepFolder(out).fit_dir("width-8")
    ckpt = RunFolder(folder).last_ckpt
    cmd = sweep_cmd(cfg, out, "--slurm", "timeout_min=10")

    def job_id(text: str) -> str:
        return text.split("submitted 1 job(s) (")[1].split(")")[0]

    sweep = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    wait_for("checkpoint", ckpt.is_file, proc=sweep)
    stopped_at = time.time()
    sweep.send_signal(signal.SIGTERM)
    first = sweep.communicate(timeout=60)[0]
    took = time.time() - stopped_at
    assert sweep.returncode == 130 and "cancelled 1 SLURM job(s)" in first, first[-2000:]
    assert slurm_states([job_id(first)]).get(job_id(first)) in ("CANCELLED", None)
    assert took < 30, f"the sweep took {took:.1f} s to stop"
    status = {r["fit"]: r["status"] for r in read_csv_rows(SweepFolder(out).fits)}
    assert status == {"width-8": "stopped"} and resume_args(folder)[0] == "--ckpt_path"
    epochs_then = epochs_logged(folder)

    sweep = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    wait_for("more epochs", lambda: epochs_logged(folder) > epochs_then + 5, proc=sweep)
    log = SweepFolder(out).slurm
    second_logs = sorted(log.glob("*/*_log.out"), key=lambda p: p.stat().st_mtime)[-1].read_text()
    assert "--ckpt_path" in fit_commands(second_logs)[0]  # the rerun resumed
    ids = [p.name for p in log.iterdir() if p.is_dir() and p.name.isdigit()]
    subprocess.run(["scancel", max(ids, key=int)], check=True)
    second = sweep.communicate(timeout=60)[0]
    assert sweep.returncode == REQUEUE_EXIT_CODE, second[-2000:]
    assert "cancelled width-8" in second and "FAIL" not in second, second[-2000:]
    assert {r["fit"]: r["status"] for r in read_csv_rows(SweepFolder(out).fits)} == {"width-8": "cancelled"}
    assert not SweepFolder(out).failed("width-8").exists()

    third = run(cmd, tmp_path)
    assert third.returncode == 0 and "done width-8" in third.stdout, third.stdout[-2000:]
    assert RunFolder(folder).read_done() is not None
    assert epochs_logged(folder) == 150  # one row per epoch, none twice


def test_srun_ddp_equals_lightning_ddp(slurm_cluster, tmp_path: Path) -> None:
    """``srun --ntasks 2 overparam-lit fit ... --trainer.devices 2 --trainer.strategy ddp`` inside a
    ``salloc`` allocation: the two tasks are the two ranks (Lightning's SLURM environment, no
    process of its own), rank 0 holds the run lock, and the rows equal a 2-process DDP fit that
    Lightning started itself."""
    cfg = study(tmp_path, [8], epochs=20)
    fit = [str(Path(sys.executable).parent / "overparam-lit"), "fit", "-c", str(cfg), "--sweep", "null",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    local, under_srun = tmp_path / "lightning", tmp_path / "srun"
    reference = subprocess.Popen([*fit, "--trainer.default_root_dir", str(local)], cwd=tmp_path, env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    srun = subprocess.Popen(["salloc", "--job-name", "ddp", "--ntasks", "2", "--ntasks-per-node", "2",
                             "srun", "--ntasks", "2", "--ntasks-per-node", "2",
                             *fit, "--trainer.default_root_dir", str(under_srun)],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lock = RunFolder(under_srun).lock_file
    holder: dict[str, str] = {}

    def lock_holder() -> bool:  # the SLURM rank of the process named in run.lock
        try:
            pid = json.loads(lock.read_text())["pid"]
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError, TypeError):
            return False
        holder.update(e.decode().split("=", 1) for e in environ if e.startswith(b"SLURM_"))
        return True

    wait_for("run.lock", lock_holder, proc=srun)
    assert holder.get("SLURM_PROCID") == "0" and holder.get("SLURM_NTASKS") == "2", holder
    output = srun.communicate(timeout=240)[0]
    assert srun.returncode == 0, output[-3000:]
    assert reference.wait(timeout=240) == 0, reference.stdout.read()[-3000:]
    assert output.count("Initializing distributed: GLOBAL_RANK:") == 2  # the two srun tasks, no more
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["lightning", "srun"]  # one folder
    assert not lock.exists()
    mine, theirs = rows(under_srun), rows(local)
    assert epochs_logged(under_srun) == 20 and mine == theirs
    w, ref = weights(under_srun), weights(local)
    assert all(torch.equal(w[k], ref[k]) for k in ref)

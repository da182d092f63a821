"""scripts/gpu_check.py at tiny sizes on the CPU: every check runs and passes, the JSON line is last,
and a check that fails leaves the others running and the exit code nonzero."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"
CHECKS = {"families", "members", "hessian", "regions", "imp", "speedup16", "cnn_widths"}


def _load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_passes_every_check():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"device", "quick", "torch", "passed", "failed", "seconds", "checks"} <= report.keys()
    assert report["device"] == "cpu" and report["quick"] is True
    assert report["passed"] is True and report["failed"] == []
    assert set(report["checks"]) == CHECKS
    for name, result in report["checks"].items():
        assert result["passed"] is True and "error" not in result, (name, result)
        assert result["seconds"] > 0
    checks = report["checks"]
    for fam in ("mlp", "cnn", "resnet18", "lenet"):
        for prec in ("32", "bf16"):
            assert checks["families"][f"{fam}_{prec}"]["ok"] is True
        assert checks["families"][f"{fam}_bf16_vs_fp32_rel"] > 0
    for case in ("mlp", "cnn"):
        assert checks["members"][case]["rel_error"] <= checks["members"][case]["rel_tol"]
    # the probe and the snapshot were compared with a second computation on the CPU
    assert checks["hessian"]["dim"] > 0 and checks["hessian"]["top_rel"] <= 1e-4
    assert checks["regions"]["points"] > 0 and checks["regions"]["unexplained"] == 0
    assert len(checks["imp"]["densities"]) == 3 and checks["imp"]["pruned_weights_zero"] is True
    assert checks["cnn_widths"]["members_complete"] is True


def test_a_failing_check_fails_the_run_but_not_the_others(monkeypatch, capsys):
    gpu_check = _load_script(monkeypatch)

    def broken(ctx):
        raise RuntimeError("probe went wrong")

    monkeypatch.setitem(gpu_check.RUNNERS, "hessian", broken)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    code = gpu_check.main(["--device", "cpu", "--quick", "--checks", "hessian,imp"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and report["passed"] is False and report["failed"] == ["hessian"]
    assert report["checks"]["hessian"]["error"] == "RuntimeError: probe went wrong"
    assert report["checks"]["imp"]["passed"] is True

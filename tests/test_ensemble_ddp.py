"""SeedEnsemble under two-process CPU DDP: ranks stay identical and the summary is written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from overparam_lit.data import TeacherStudent
from overparam_lit.models import MLP

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
def test_seed_ensemble_ddp(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tests/ddp/ensemble_ddp.py"), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP kept every seed in sync
    summary = json.loads((tmp_path / "ensemble" / "summary.json").read_text())
    members = torch.load(tmp_path / "ensemble" / "members.pt", weights_only=True)
    dm = TeacherStudent(input_dim=2, teacher_width=4, n_train=400, n_test=100)
    x, y, _ = dm.probe_set(None, "train")
    for i, seed in enumerate(summary["seeds"]):
        net = MLP(width=6, depth=1, input_shape=(2,), num_classes=1, task="regression")
        net.net.load_state_dict(members[seed])
        with torch.no_grad():
            loss = torch.nn.functional.mse_loss(net(x), y).item()
        assert abs(loss - summary["final_loss"][i]) < 1e-5 * max(1.0, loss)

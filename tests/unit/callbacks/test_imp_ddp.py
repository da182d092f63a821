"""IMP under two-process CPU DDP (gloo): every rank holds the same masks and weights."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.ddp
def test_ddp_ranks_hold_identical_masks(tmp_path, run_ddp):
    run_ddp("imp_ddp.py", tmp_path, timeout=180)  # fails the test unless the script exits 0
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["masks"].keys() == r1["masks"].keys()
    for n in r0["masks"]:
        assert torch.equal(r0["masks"][n], r1["masks"][n])
    assert sum(int(m.sum()) for m in r0["masks"].values()) == round(384 * 0.25)
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k])
        assert torch.equal(r0["snapshot"][k], r1["snapshot"][k])
    assert r0["history"] == r1["history"]  # metrics reduced over both ranks
    summary = json.loads((tmp_path / "imp" / "summary.json").read_text())
    assert [lv["level"] for lv in summary["levels"]] == [0, 1, 2]
    assert summary["levels"][2]["kept"] == round(384 * 0.25)
    # global steps: 200 samples / 2 ranks / 25 per batch = 4 steps per epoch
    assert summary["levels"][2]["global_step"] == 12

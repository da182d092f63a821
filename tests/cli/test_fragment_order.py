"""The study fragments compose in any order: schedules are resolved after every callback's setup,
so IMP lengthening the fit moves region snapshots and Hessian probes the same way whatever the
order of ``-c callbacks/*.yaml`` on the command line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from overparam_lit.cli import main
from overparam_lit.runfolder import RunFolder
from overparam_lit.schedules import log_spaced

REPO = Path(__file__).resolve().parents[2]
FRAGMENTS = {
    "imp": ["-c", "callbacks/imp.yaml", "--trainer.callbacks.levels", "2"],
    "hessian": ["-c", "callbacks/hessian.yaml", "--trainer.callbacks.num_probes", "4",
                "--trainer.callbacks.probe_size", "50", "--trainer.callbacks.slq_runs", "0",
                "--trainer.callbacks.k", "1", "--trainer.callbacks.lanczos_iters", "4",
                "--trainer.callbacks.bottom_iters", "4", "--trainer.callbacks.save_figure", "false"],
    "regions": ["-c", "callbacks/regions.yaml", "--trainer.callbacks.num_snapshots", "5",
                "--trainer.callbacks.num_planes", "1", "--trainer.callbacks.resolution", "8",
                "--trainer.callbacks.render_planes", "0"],
}


@pytest.mark.parametrize("order", list(itertools.permutations(FRAGMENTS)), ids="-".join)
def test_schedules_do_not_depend_on_fragment_order(tmp_path, monkeypatch, order):
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    args = ["fit", "-c", "configs/quickstart.yaml", "--model.width", "8", "--data.train_subset", "400",
            "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run), "--wandb.mode", "disabled",
            "--test_after_fit", "false"]
    for name in order:
        args += FRAGMENTS[name]
    main(args)
    folder = RunFolder(run)
    levels = json.loads(folder.imp_summary.read_text())["levels"]
    assert [lv["level"] for lv in levels] == [0, 1, 2]  # 3 levels x 2 epochs = 6 epochs
    snapshots = [h["epoch"] for h in json.loads(folder.regions_history.read_text())["snapshots"]]
    assert snapshots == [0, 1, 2, 4, 6]  # log-spaced over the 6 epochs IMP set, not the configured 2
    probes = sorted(int(p.stem.removeprefix("probe_step")) for p in folder.hessian.glob("probe_step*.npz"))
    assert probes == [0, *log_spaced(6 * 4, 4)]  # 4 steps an epoch (400 samples, batch 100)

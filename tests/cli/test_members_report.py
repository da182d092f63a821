"""A fit of several widths reports its members as members: per-width means under ``width/<k>/...`` in
metrics.csv and W&B (no mean width or size that matches no network), a W&B config that names the
members' widths and seeds, and an end-of-fit table per width that points at members.csv."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest

from overparam_lit.cli import main
from overparam_lit.runfolder import RunFolder
from overparam_lit.testing import read_wandb_run


@pytest.fixture(scope="module")
def widths_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A ``--model.widths [4, 8] --model.seeds 2`` fit (W&B offline) and what it printed."""
    run = tmp_path_factory.mktemp("widths") / "run"
    mp = pytest.MonkeyPatch()
    mp.delenv("WANDB_API_KEY", raising=False)
    mp.setenv("NETRC", str(run.parent / "no-netrc"))
    import contextlib
    import io

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main(["fit", "--model", "MLP", "--data", "MNIST1D", "--model.widths", "[4, 8]",
                  "--model.seeds", "2", "--data.num_samples", "300", "--trainer.max_epochs", "2",
                  "--seed_everything", "0",
                  "--trainer.enable_model_summary", "false", "--wandb.mode", "offline",
                  "--trainer.default_root_dir", str(run)])
    finally:
        mp.undo()
    return run, out.getvalue()


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_csv_has_per_width_means_of_the_members(widths_fit: tuple[Path, str]) -> None:
    run, _ = widths_fit
    metrics, members = read(run / "metrics.csv"), read(run / "members.csv")
    assert {int(r["width"]) for r in members} == {4, 8} and len({r["member"] for r in members}) == 4
    # no mean over members of the width or the size: those match no network
    assert not any(r.get("model/width") or r.get("model/num_params") for r in metrics)
    sizes = {int(r["width"]): int(r["num_params"]) for r in members}
    for width, count in sizes.items():
        key = f"width/{width}/num_params"
        assert [float(r[key]) for r in metrics if r.get(key)] == [count]
    checked = 0
    for split, keys in (("train", ("loss", "acc")), ("val", ("loss", "acc")), ("test", ("loss", "acc"))):
        for key in keys:
            name = f"{split}/{key}"
            for width in (4, 8):
                rows = [r for r in metrics if r.get(f"width/{width}/{name}")]
                assert rows, (width, name)
                for row in rows:
                    mine = [float(m[name]) for m in members if int(m["width"]) == width and m.get(name)
                            and (split == "test" or m["epoch"] == row["epoch"])]
                    assert len(mine) == 2, (width, name, row)
                    assert math.isclose(float(row[f"width/{width}/{name}"]), sum(mine) / 2, rel_tol=1e-6)
                    checked += 1
    assert checked == 2 * 2 * (2 + 2 + 1)  # two widths, two metrics, epochs of train and val, one test


def test_wandb_config_names_the_members(widths_fit: tuple[Path, str]) -> None:
    run, _ = widths_fit
    (file,) = RunFolder(run).wandb_run_files()
    record = read_wandb_run(file)
    config = record["config"]
    assert config["model.widths"] == [4, 8] and config["model.seeds"] == [0, 1]
    assert config["model.members"] == 4
    assert config["model.width"] == [4, 8]  # not the base width, which trains no member
    members = read(run / "members.csv")
    sizes = {int(r["width"]): int(r["num_params"]) for r in members}
    assert config["model.num_params"] == [sizes[4], sizes[8]]
    # the W&B history has the per-width series too
    assert any("width/8/val/acc" in row for row in record["history"])
    assert not any("model/width" in row for row in record["history"])


def test_summary_prints_a_table_per_width(widths_fit: tuple[Path, str]) -> None:
    run, out = widths_fit
    lines = out.splitlines()
    start = lines.index("Members by width (final values, means over the seeds):")
    head = lines[start + 1].split()
    assert head == ["width", "seeds", "num_params", "val/acc", "val/loss", "test/acc", "test/loss"]
    members = read(run / "members.csv")
    for i, width in enumerate((4, 8)):
        cells = lines[start + 2 + i].split()
        size = next(r["num_params"] for r in members if int(r["width"]) == width)
        assert cells[:3] == [str(width), "2", size]
        tests = [float(r["test/acc"]) for r in members if int(r["width"]) == width and r.get("test/acc")]
        assert float(cells[5]) == pytest.approx(sum(tests) / 2, abs=1e-4)
    assert lines[start + 4] == f"Members: {run / 'members.csv'} (one row per member and epoch)"
    # the best epoch counts from 1, as the epoch lines do
    best = re.search(r"Best val/acc \S+ \(epoch (\d+)\)", out)
    assert best is not None and 1 <= int(best.group(1)) <= 2
    assert re.search(r"^epoch 1/2 ", out, re.M)

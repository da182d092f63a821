"""``overparam-lit reproductions``: published numbers beside a tiny sweep's measured values, the
interval over seeds checked against numpy (min-max) and scipy (Wilson)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from overparam_lit.cli import main as cli_main
from overparam_lit.studies import reproductions as rp
from overparam_lit.studies.sweep import main as sweep_main
from overparam_lit.testing import TINY_STUDY_BASE


def entries(study: str) -> tuple[rp.Published, ...]:
    acc = lambda folder: rp.Measured(tuple(rp.measure_rows(rp._results(folder), "val/acc", {"width": 8})),  # noqa: E731
                                     at="width 8")
    return (
        rp.Published("test accuracy", "a paper", "10%", 0.10, study=study, out="runs/tiny",
                     figure="double-descent", measure=acc, tolerance=0.0),
        rp.Published("test accuracy, other recipe", "a paper", "99%", 0.99, study=study, out="runs/tiny",
                     figure="double-descent", measure=acc, tolerance=0.01, protocol="fewer epochs"),
        rp.Published("a study not run", "a paper", "50%", 0.5, study="configs/study_nowhere.yaml",
                     out="runs/x", figure="hessian", measure=acc),
        rp.Published("a single fit", "a paper", "68%", 0.68, None, protocol="no study"),
    )


def test_table_of_a_tiny_sweep(tmp_path: Path, monkeypatch, capsys) -> None:
    cfg = yaml.safe_load(yaml.safe_dump(TINY_STUDY_BASE))
    cfg["trainer"]["max_epochs"] = 1
    cfg["model"]["init_args"]["width"] = 8
    cfg["sweep"] = {"grid": {"seed_everything": [0, 1, 2]}, "pack": "seeds", "figure": "double-descent"}
    study = tmp_path / "study_tiny.yaml"
    study.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "tiny"
    assert sweep_main(["-c", str(study), "--out", str(out)]) == 0
    with open(out / "results.csv", newline="") as fh:
        acc = np.array([float(r["val/acc"]) for r in csv.DictReader(fh)])
    assert acc.size == 3
    capsys.readouterr()

    monkeypatch.setattr(rp, "PUBLISHED", entries("configs/study_tiny.yaml"))
    table = tmp_path / "table.md"
    assert cli_main(["reproductions", str(out), str(tmp_path), "--out", str(table)]) == 0
    printed = capsys.readouterr().out
    assert table.read_text() == printed
    rows = rp.reproductions([out], rp.PUBLISHED)
    assert float(rows[0]["mean"]) == pytest.approx(acc.mean(), rel=1e-12)
    assert (float(rows[0]["lo"]), float(rows[0]["hi"])) == (acc.min(), acc.max())
    assert rows[0]["seeds"] == "3" and "min-max, 3 seeds; width 8" in rows[0]["measured"]
    lo, hi = acc.min(), acc.max()
    close = abs(acc.mean() - 0.10) <= 0 or lo <= 0.10 <= hi
    assert rows[0]["verdict"] == ("reproduced" if close else "not reproduced")
    assert rows[1]["verdict"].startswith("different protocol (fewer epochs); ")
    assert rows[2]["verdict"] == "not run" and rows[3]["verdict"] == "not run: no study"
    assert f"{100 * acc.mean():.1f}%" in printed and printed.count("\n") == 2 + 4
    assert "`overparam-lit sweep -c configs/study_tiny.yaml --out runs/tiny`" in printed


def test_wilson_interval_matches_scipy() -> None:
    for k, n in ((22, 50), (0, 32), (50, 50), (1, 3)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert rp.wilson(k, n) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)
    m = rp.Measured((1.0,) * 22 + (0.0,) * 28, kind="wilson")
    assert rp.interval(m)[0] == pytest.approx(0.44)


def test_missing_folder_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["reproductions", str(tmp_path / "nowhere")])
    assert exc.value.code == 2 and "sweep folder(s) not found" in capsys.readouterr().err

"""Studies: grid parsing, the sweep runner on a tiny grid (retry, skip, results table), cluster
files, and the figure scripts on run folders with known numbers."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from overparam_lit.studies import (
    DONE_FILE,
    expand_grid,
    group_curves,
    load_grid_file,
    merge_grids,
    parse_grid_arg,
    parse_value,
)
from overparam_lit.utils import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("sweep", "plot_double_descent", "plot_lottery", "plot_spectra", "plot_regions", "report")


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mlp_params(w: int) -> int:
    """Parameters of MLP(width=w, depth=2) on MNIST-1D (40 inputs, 10 classes), counted by hand."""
    return 40 * w + w + w * w + w + w * 10 + 10


# ---- grids ---------------------------------------------------------------------------------
def test_grid_parsing_and_points(tmp_path: Path) -> None:
    assert parse_grid_arg("model.init_args.width=2, 4,8") == ("model.init_args.width", ["2", "4", "8"])
    assert parse_grid_arg("--seed_everything=0") == ("seed_everything", ["0"])
    assert [parse_value(v) for v in ("8", "0.15", "true", "null", "relu")] == [8, 0.15, True, None, "relu"]
    for bad in ("model.width", "model.width=", "model.width=2,,4", "=2,4", "bad key=1"):
        with pytest.raises(ConfigError):
            parse_grid_arg(bad)
    f = tmp_path / "grid.yaml"
    f.write_text("grid:\n  data.init_args.label_noise: [0.0, 0.15]\n  model.init_args.activation: relu\n")
    grid = merge_grids(dict([parse_grid_arg("model.init_args.width=2,4")]), load_grid_file(f))
    points = expand_grid(grid)
    assert len(points) == 4  # 2 widths x 2 noise levels x 1 activation
    assert points[0].name == "width-2_label_noise-0.0_activation-relu"
    assert points[1].values == {"model.init_args.width": "2", "data.init_args.label_noise": "0.15",
                                "model.init_args.activation": "relu"}
    assert points[3].parsed()["model.init_args.width"] == 4
    with pytest.raises(ConfigError, match="twice"):
        merge_grids({"a": ["1"]}, {"a": ["2"]})
    with pytest.raises(ConfigError, match="same point twice"):
        expand_grid({"seed_everything": ["0", "0"]})
    (tmp_path / "empty.yaml").write_text("model.init_args.width: []\n")
    with pytest.raises(ConfigError, match="no values"):
        load_grid_file(tmp_path / "empty.yaml")
    # same short name twice: longer names keep points apart
    names = [p.name for p in expand_grid({"model.init_args.width": ["2"], "data.init_args.width": ["3"]})]
    assert names == ["model_width-2_data_width-3"]


def test_group_curves_mean_and_band() -> None:
    rows = [{"w": 2, "e": 0.5}, {"w": 2, "e": 0.3}, {"w": 4, "e": 0.1}, {"w": 4, "e": None}]
    c = group_curves(rows, "w", "e")[None]
    assert c["x"].tolist() == [2, 4] and np.allclose(c["mean"], [0.4, 0.1])
    assert np.allclose(c["lo"], [0.3, 0.1]) and np.allclose(c["hi"], [0.5, 0.1]) and c["n"].tolist() == [2, 1]


def test_every_script_answers_help(capsys) -> None:
    for name in SCRIPTS:
        with pytest.raises(SystemExit) as exc:
            script(name).main(["--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_bad_input_is_refused_before_training(tmp_path: Path, capsys) -> None:
    sweep = script("sweep")
    cfg = str(REPO / "configs" / "quickstart.yaml")
    cases = [
        (["-c", cfg, "--grid", "model.init_args.width", "--out", str(tmp_path / "s")], "has no '='"),
        (["-c", cfg, "--grid", "model.init_args.width=", "--out", str(tmp_path / "s")], "empty value"),
        (["-c", str(tmp_path / "missing.yaml"), "--grid", "seed_everything=0", "--out", str(tmp_path / "s")],
         "config file not found"),
        (["-c", cfg, "--out", str(tmp_path / "s")], "no grid given"),
        (["-c", cfg, "--grid", "seed_everything=0", "--set", "trainer.max_epochs",
          "--out", str(tmp_path / "s")], "not KEY=VALUE"),
    ]
    for argv, message in cases:
        assert sweep.main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing ran, nothing written
    missing = str(tmp_path / "no_such_run")
    for name in ("plot_double_descent", "plot_lottery", "plot_spectra", "plot_regions", "report"):
        assert script(name).main([missing]) == 2
        assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert script("plot_double_descent").main([str(tmp_path / "empty")]) == 2
    assert "results.csv" in capsys.readouterr().err
    assert script("plot_spectra").main([str(tmp_path / "empty")]) == 2
    assert "hessian" in capsys.readouterr().err


def test_cluster_files(tmp_path: Path) -> None:
    sweep = script("sweep")
    cfg = str(REPO / "configs" / "quickstart.yaml")
    out = tmp_path / "s"
    argv = ["-c", cfg, "--grid", "model.init_args.width=2,4", "--grid", "seed_everything=0,1",
            "--set", "trainer.max_epochs=3", "--out", str(out), "--name", "dd"]
    assert sweep.main([*argv, "--slurm", "--slurm-max-parallel", "2", "--wandb-sweep"]) == 0
    text = (out / "sweep.slurm").read_text()
    assert "#SBATCH --array=0-3%2" in text and "#SBATCH --gres=gpu:1" in text
    assert '--point "$SLURM_ARRAY_TASK_ID"' in text and "--grid model.init_args.width=2,4" in text
    spec = yaml.safe_load((out / "wandb_sweep.yaml").read_text())
    assert spec["method"] == "grid"
    assert spec["parameters"] == {"model.init_args.width": {"values": [2, 4]},
                                  "seed_everything": {"values": [0, 1]}}
    assert spec["command"][-1] == "${args}" and "--wandb.group=dd" in spec["command"]
    assert "--trainer.max_epochs=3" in spec["command"]
    assert not (out / "points").exists()
    # the job-array line selects one point
    line = [ln for ln in text.splitlines() if "--point" in ln][0]
    assert sweep.main([*argv, "--point", "3", "--dry-run"]) == 0
    assert "--point" in line


FLAKY = '''
from pathlib import Path
import lightning as L

class CrashOnce(L.Callback):
    """Crashes the first run that finds the flag file (and removes it)."""
    def __init__(self, flag: str) -> None:
        self.flag = Path(flag)
    def on_train_start(self, trainer, pl_module) -> None:
        if self.flag.exists():
            self.flag.unlink()
            raise RuntimeError("injected crash")
'''


def tiny_sweep_args(tmp_path: Path, out: Path) -> list[str]:
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "crash.yaml").write_text(
        "trainer:\n  callbacks+:\n    - class_path: flaky.CrashOnce\n"
        f"      init_args: {{flag: {tmp_path / 'crash_flag'}}}\n")
    return ["-c", str(REPO / "configs" / "study_mnist1d_double_descent.yaml"),
            "-c", str(tmp_path / "crash.yaml"),
            "--grid", "model.init_args.width=2,4", "--out", str(out), "--workers", "1", "--retries", "1",
            "--set", "trainer.max_epochs=2", "--set", "trainer.check_val_every_n_epoch=1",
            "--set", "data.init_args.train_subset=200", "--set", "wandb.mode=disabled"]


def test_tiny_sweep_retries_skips_collects_and_plots(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    sweep, out = script("sweep"), tmp_path / "dd"
    argv = tiny_sweep_args(tmp_path, out)
    (tmp_path / "crash_flag").write_text("")
    assert sweep.main(argv) == 0
    log = capsys.readouterr().out
    assert "FAIL width-2 (attempt 1" in log and "done width-2" in log and "done width-4" in log
    done = {w: json.loads((out / "points" / f"width-{w}" / DONE_FILE).read_text()) for w in (2, 4)}
    assert done[2]["attempts"] == 2 and done[4]["attempts"] == 1
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["point"] for r in rows] == ["width-2", "width-4"]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert [int(r["model.init_args.width"]) for r in rows] == [2, 4]
    assert [int(float(r["model/num_params"])) for r in rows] == [mlp_params(2), mlp_params(4)]
    # final metrics are the last logged values of each run's metrics.csv
    for r, w in zip(rows, (2, 4), strict=True):
        with open(out / "points" / f"width-{w}" / "metrics.csv") as fh:
            last_val = [x for x in csv.DictReader(fh) if x["val/acc"]][-1]
        assert float(r["val/acc"]) == pytest.approx(float(last_val["val/acc"]))
        assert float(r["epoch"]) == 1.0
    # rerun: finished points are skipped, nothing is trained
    stamp = (out / "points" / "width-2" / DONE_FILE).stat().st_mtime_ns
    assert sweep.main(argv) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    assert (out / "points" / "width-2" / DONE_FILE).stat().st_mtime_ns == stamp

    assert script("plot_double_descent").main([str(out), "--threshold", "1.0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    errs = {w: 1 - float(r["val/acc"]) for w, r in zip((2, 4), rows, strict=False)}
    assert summary["per_width"]["2"]["test_error"] == pytest.approx(errs[2], abs=1e-6)
    assert summary["per_width"]["4"]["num_params"] == mlp_params(4)
    assert summary["interpolation_width"] == 2.0  # threshold 1.0: every width counts as fitting
    assert (out / "double_descent.png").stat().st_size > 1000
    assert script("report").main([str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 and "width-4" in page and "<table>" in page


def test_failing_point_is_reported(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    sweep, out = script("sweep"), tmp_path / "bad"
    argv = ["-c", str(REPO / "configs" / "quickstart.yaml"), "--grid", "model.init_args.width=-3",
            "--out", str(out), "--retries", "0", "--set", "wandb.mode=disabled"]
    assert sweep.main(argv) == 1
    text = capsys.readouterr().out
    assert "FAIL width--3" in text and "1 point(s) failed" in text
    with open(out / "results.csv") as fh:
        assert next(csv.DictReader(fh))["status"] == "failed"


# ---- figure scripts on synthetic run folders -------------------------------------------------
def write_run(path: Path, width: int, seed: int) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(
        {"seed_everything": seed, "model": {"class_path": "overparam_lit.models.MLP",
                                            "init_args": {"width": width}}}))
    (path / "hparams.yaml").write_text("num_classes: 3\n")
    return path


def test_plot_lottery_means_over_seeds(tmp_path: Path, capsys) -> None:
    for seed, accs in ((0, [0.60, 0.62, 0.58]), (1, [0.64, 0.66, 0.54])):
        run = write_run(tmp_path / f"imp_s{seed}", 100, seed)
        (run / "imp").mkdir()
        levels = [{"level": i, "density": d, "test/acc": a}
                  for i, (d, a) in enumerate(zip((1.0, 0.8, 0.64), accs, strict=True))]
        (run / "imp" / "summary.json").write_text(json.dumps({"levels": levels}))
        for mode, acc in (("random_reinit", 0.50 + seed / 100), ("random_mask", 0.40)):
            ctrl = write_run(tmp_path / f"{mode}_s{seed}", 100, seed)
            (ctrl / "imp").mkdir()
            (ctrl / "imp" / "ticket_result.json").write_text(
                json.dumps({"mode": mode, "density": 0.64, "seed": 7, "test/acc": acc}))
    assert script("plot_lottery").main([str(tmp_path)]) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["table"]
    assert table["ticket"]["0.64"]["mean"] == pytest.approx(0.56)
    assert table["ticket"]["0.64"]["lo"] == pytest.approx(0.54) and table["ticket"]["0.64"]["seeds"] == 2
    assert table["random_reinit"]["0.64"]["mean"] == pytest.approx(0.505)
    assert table["random_mask"]["0.64"]["mean"] == pytest.approx(0.40)
    assert (tmp_path / "lottery.png").stat().st_size > 1000
    # the output of scripts/lottery_science.py reads the same way
    rows = [{"seed": 0, "level": 0, "density": 1.0, "mode": "imp", "test_acc": 0.7},
            {"seed": 0, "level": 3, "density": 0.5, "mode": "random_mask", "test_acc": 0.3}]
    (tmp_path / "ls").mkdir()
    (tmp_path / "ls" / "lottery_science.json").write_text(json.dumps({"rows": rows}))
    assert script("plot_lottery").main([str(tmp_path / "ls" / "lottery_science.json")]) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["table"]
    assert table == {"ticket": {"1": {"mean": 0.7, "lo": 0.7, "hi": 0.7, "seeds": 1}},
                     "random_mask": {"0.5": {"mean": 0.3, "lo": 0.3, "hi": 0.3, "seeds": 1}}}


def test_plot_spectra_reads_probe_files(tmp_path: Path, capsys) -> None:
    grid = np.linspace(-1, 5, 50)
    for width in (8, 32):
        run = write_run(tmp_path / "points" / f"w{width}", width, 0)
        (run / "hessian").mkdir()
        for step, lmax in ((1, 1.0), (10, 2.0 * width), (100, 3.0 * width)):
            np.savez(run / "hessian" / f"probe_step{step:08d}.npz", step=np.int64(step),
                     lambda_max=np.float64(lmax), lambda_min=np.float64(-0.1 * step),
                     negative_fraction=np.float64(0.5 / step), trace=np.float64(lmax * 2),
                     density_grid=grid, density=np.exp(-grid ** 2))
    assert script("plot_spectra").main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    last = json.loads(out[-1])["last_probe"]
    assert last[str(tmp_path / "points" / "w32")] == {"lambda_max": 96.0, "lambda_min": -10.0,
                                                      "negative_fraction": 0.005, "trace": 192.0, "step": 100}
    for suffix in ("scalars", "density", "width"):
        assert (tmp_path / f"spectra_{suffix}.png").stat().st_size > 1000


def test_plot_regions_reads_history_and_maps(tmp_path: Path, capsys) -> None:
    from overparam_lit.regions import make_plane_bank

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 1, 6, generator=gen)
    y = torch.arange(30) % 3
    bank = make_plane_bank(x, y, y, 2, 8, "distinct_classes", margin=0.5, seed=0)
    shared = bank.save(tmp_path / "bank.pt")
    for width, frag in ((4, 3.0), (16, 1.5)):
        run = write_run(tmp_path / "points" / f"w{width}", width, 0)
        (run / "regions").mkdir()
        snaps = []
        for epoch in (0, 5):
            pred = (np.arange(2 * 8 * 8).reshape(2, 8, 8) // (width * (epoch + 1))) % 3
            np.savez(run / "regions" / f"maps_epoch{epoch:04d}.npz", pred=pred,
                     confidence=np.ones(pred.shape),
                     margin=np.ones(pred.shape), anchor_pred=np.zeros((2, 3), dtype=np.int64))
            snaps.append({"epoch": epoch, "maps": f"maps_epoch{epoch:04d}.npz",
                          "regions/fragmentation": frag + (1 - epoch / 5)})
        (run / "regions" / "history.json").write_text(json.dumps({"bank": str(shared), "snapshots": snaps}))
    assert script("plot_regions").main([str(tmp_path / "points"), "--planes", "0", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = json.loads(lines[-1])["last_fragmentation"]
    assert last == {str(tmp_path / "points" / "w4"): 3.0, str(tmp_path / "points" / "w16"): 1.5}
    assert (tmp_path / "points" / "regions_summary_planes.png").stat().st_size > 1000
    assert (tmp_path / "points" / "regions_summary_fragmentation.png").stat().st_size > 1000


@pytest.mark.slow
def test_sweep_survives_sigkill(tmp_path: Path) -> None:
    """Kill the sweep process itself mid-run: its runs die with it, a rerun skips the finished point."""
    out = tmp_path / "dd"
    argv = tiny_sweep_args(tmp_path, out)
    argv[argv.index("trainer.max_epochs=2")] = "trainer.max_epochs=300"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "sweep.py"), *argv], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "points" / "width-2" / DONE_FILE
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert first.exists()
    ckpt = out / "points" / "width-4" / "checkpoints" / "last.ckpt"
    while not ckpt.exists() and time.time() < deadline:  # the second point is training now
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out / "points" / "width-4") not in ps  # the orphaned run was terminated
    stamp = first.stat().st_mtime_ns
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 already finished, 1 to run" in res.stdout and "skip width-2" in res.stdout
    assert first.stat().st_mtime_ns == stamp
    # the killed point resumed from its last checkpoint; rows before the kill are kept
    done = json.loads((out / "points" / "width-4" / DONE_FILE).read_text())
    assert done["metrics"]["epoch"] == 299 and 0 <= done["metrics"]["val/acc"] <= 1
    assert "--ckpt_path" in done["command"]
    with open(out / "points" / "width-4" / "metrics.csv") as fh:
        starts = [r for r in csv.DictReader(fh) if r.get("model/num_params")]
    assert len(starts) == 2  # the first fit's rows are still there, followed by the resumed fit's

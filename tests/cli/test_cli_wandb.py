"""W&B runs that can draw the studies: the whole config with dotted keys, own x axes for level-,
probe- and snapshot-wise series, end-of-fit summaries, readable names and groups. The offline run
file is read back with :func:`overparam_lit.testing.read_wandb_run` (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from overparam_lit.cli import main
from overparam_lit.loggers import flatten_config
from overparam_lit.runfolder import RunFolder
from overparam_lit.testing import read_wandb_run

REPO = Path(__file__).resolve().parents[2]


def test_flatten_config_drops_init_args_and_lists_callbacks() -> None:
    config = {
        "seed_everything": 3,
        "model": {"class_path": "overparam_lit.models.MLP", "init_args": {
            "width": 64, "depth": 2,
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
            "lr_scheduler": None}},
        "data": {"class_path": "overparam_lit.data.MNIST1D", "init_args": {"label_noise": 0.15}},
        "trainer": {"max_epochs": 5, "logger": None, "callbacks": [
            {"class_path": "overparam_lit.callbacks.hessian.HessianProbe", "init_args": {"k": 5}},
            {"class_path": "overparam_lit.callbacks.imp.IterativeMagnitudePruning",
             "init_args": {"levels": 3}},
            {"class_path": "overparam_lit.callbacks.hessian.HessianProbe", "init_args": {"k": 2}}]},
        "wandb": {"group": "dd", "tags": ["a"]},
        "ckpt_path": Path("runs/x/last.ckpt"),
    }
    flat = flatten_config(config)
    assert flat == {
        "seed_everything": 3,
        "model.class_path": "overparam_lit.models.MLP", "model.width": 64, "model.depth": 2,
        "optimizer.class_path": "torch.optim.SGD", "optimizer.lr": 0.1, "optimizer.momentum": 0.9,
        "lr_scheduler": None,
        "data.class_path": "overparam_lit.data.MNIST1D", "data.label_noise": 0.15,
        "trainer.max_epochs": 5,
        "callbacks": "HessianProbe, IterativeMagnitudePruning, HessianProbe",
        "callbacks.HessianProbe.k": 5, "callbacks.IterativeMagnitudePruning.levels": 3,
        "callbacks.HessianProbe_2.k": 2,
        "wandb.group": "dd", "wandb.tags": ["a"], "ckpt_path": "runs/x/last.ckpt",
    }


def test_offline_run_carries_config_axes_summary_and_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run = tmp_path / "noise_sweep" / "points" / "width-8_label_noise-0.15"  # an overparam-lit sweep point
    main(["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), "--model.width", "8",
          "--data.label_noise", "0.15", "--seed_everything", "3", "--trainer.max_epochs", "2",
          "--trainer.callbacks+=LearningRateMonitor", "--trainer.callbacks.logging_interval", "epoch",
          "--trainer.default_root_dir", str(run), "--wandb.mode", "offline", "--wandb.tags", "[dd]",
          "--trainer.enable_progress_bar", "false"])
    folder = RunFolder(run)
    files = folder.wandb_run_files()
    assert len(files) == 1 and folder.wandb_offline_runs() == [files[0].parent]
    record = read_wandb_run(files[0])
    # names and groups: the point's folder, grouped by its sweep; the subcommand as job type
    assert record["run"]["name"] == "width-8_label_noise-0.15" and record["run"]["group"] == "noise_sweep"
    assert record["run"]["job_type"] == "fit" and set(record["run"]["tags"]) == {"dd", "MLP", "MNIST1D"}
    # the whole resolved config, flat; the same values config.yaml holds
    config, saved = record["config"], yaml.safe_load(folder.config_yaml.read_text())
    assert config["data.label_noise"] == saved["data"]["init_args"]["label_noise"] == 0.15
    assert config["model.width"] == 8 and config["seed_everything"] == 3 and config["trainer.max_epochs"] == 2
    assert config["optimizer.class_path"] == "torch.optim.Adam"
    assert config["optimizer.lr"] == saved["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.001
    assert config["model.class_path"] == "overparam_lit.models.MLP" and config["model.input_shape"] == [1, 40]
    assert config["callbacks"] == "LearningRateMonitor"
    assert config["callbacks.LearningRateMonitor.logging_interval"] == "epoch"
    assert not any("init_args" in k for k in config) and "width" not in config  # no bare hparams
    # level-, probe- and snapshot-wise series get their own x axis
    axes = {m["glob_name"]: m["step_metric"] for m in record["metrics"] if m["glob_name"]}
    assert axes["imp/*"] == "imp/level" and axes["hessian/*"] == "hessian/step"
    assert axes["regions/*"] == "regions/epoch"
    # summary values agree with metrics.csv
    rows = folder.read_metrics()
    val = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    train = [float(r["train/acc"]) for r in rows if r.get("train/acc")]
    test = [float(r["test/acc"]) for r in rows if r.get("test/acc")]
    summary = record["summary"]
    assert len(val) == 2 and len(test) == 1
    assert summary["final/test_error"] == pytest.approx(1 - test[0])
    assert summary["best/val_acc"] == pytest.approx(max(val))
    assert summary["final/val_acc"] == pytest.approx(val[-1])
    assert summary["final/train_error"] == pytest.approx(1 - train[-1])
    assert summary["test/acc"] == pytest.approx(test[0])

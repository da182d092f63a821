"""The CLI end to end: config saving, run folder, links, short names, W&B offline, errors, DDP."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from overparam_lit.cli import main
from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP

REPO = Path(__file__).resolve().parents[2]


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_quickstart_writes_run_folder_and_offline_wandb(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run = tmp_path / "run"
    main(["fit", "-c", "configs/quickstart.yaml", "--trainer.max_epochs", "2",
          "--trainer.default_root_dir", str(run), "--model.width", "32"])
    text = (run / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["model"]["init_args"]["width"] == 32
    assert "#   model.init_args.input_shape: [1, 40]" in text  # linked from the data module
    assert yaml.safe_load((run / "hparams.yaml").read_text())["input_shape"] == [1, 40]
    rows = read_metrics(run)
    assert column(rows, "model/num_params")[0] == 40 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert len(column(rows, "val/acc")) == 2 and len(column(rows, "train/loss")) == 2
    assert len(column(rows, "test/acc")) == 1  # fit ends with the test split
    assert (run / "checkpoints" / "last.ckpt").is_file()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_resume_keeps_earlier_metrics_rows(tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--wandb.mode", "disabled",
              "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--trainer.max_epochs", "2"])
    main(["fit", *common, "--trainer.max_epochs", "3", "--ckpt_path", str(run / "checkpoints/last.ckpt")])
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows if r.get("val/acc")] == ["0", "1", "2"]
    assert [r["epoch"] for r in rows if r.get("train/loss")] == ["0", "1", "2"]
    # the first fit's test row came after its last checkpoint: the resume replaced it
    assert [r["epoch"] for r in rows if r.get("test/acc")] == ["3"]
    assert list(run.glob("config.yaml.*.bak"))  # the first fit's config is kept too


def test_short_names_and_regression_link(tmp_path: Path) -> None:
    run = tmp_path / "ts"
    main(["fit", "--model", "MLP", "--data", "TeacherStudent", "--data.num_classes", "2",
          "--model.width", "16", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run),
          "--wandb.mode", "disabled", "--trainer.enable_progress_bar", "false"])
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["task"] == "regression" and hparams["num_classes"] == 2
    assert column(read_metrics(run), "val/loss")
    # the saved config runs again as it is
    again = tmp_path / "again"
    main(["fit", "-c", str(run / "config.yaml"), "--trainer.default_root_dir", str(again)])
    assert column(read_metrics(again), "val/loss")


def test_readme_new_study_runs_from_the_cli(tmp_path: Path, monkeypatch) -> None:
    readme = (REPO / "README.md").read_text()
    code = readme.split("```python\n# my_study.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_study.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--model", "my_study.QuadraticNet", "--model.width", "8", "--data", "MNIST1D",
          "--trainer.max_epochs", "1", "--trainer.default_root_dir", "run", "--wandb.mode", "disabled",
          "--trainer.enable_progress_bar", "false"])
    rows = read_metrics(tmp_path / "run")
    assert column(rows, "model/num_params")[0] == 40 * 8 + 8 + 8 * 10 + 10


@pytest.mark.parametrize("args,expect", [
    (["--model.width", "0"], "model width must be a positive integer (got 0)"),
    (["--model.depth", "0"], "MLP depth must be an integer >= 1 (got 0)"),
    (["--model.activation", "swish9"], "unknown activation (got 'swish9')"),
    (["--data.label_noise", "1.0"], "label_noise must lie in [0, 1) (got 1.0)"),
    (["--data.train_subset", "5000"], "train_subset is larger than the 4000 training samples"),
    (["--model", "CNN", "--data", "Toy2D"], "CNN takes 1-D inputs (C, L) or 2-D inputs (C, H, W)"),
])
def test_bad_input_is_one_paragraph(tmp_path: Path, capsys, args: list[str], expect: str) -> None:
    base = ["--model", "MLP", "--data", "MNIST1D"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base, *args, "--wandb.mode", "disabled", "--trainer.max_epochs", "1",
              "--trainer.default_root_dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing trained


def test_missing_cifar_folder_offline(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "overparam_lit", "fit", "--model", "CNN", "--data", "CIFAR10",
           "--data.root", str(tmp_path / "cifar"), "--wandb.mode", "disabled"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") <= 3  # one paragraph (and at most Lightning's seed notice)
    assert "cifar-10-batches-py" in proc.stderr and "--data.download true" in proc.stderr


@pytest.mark.ddp
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "tests/ddp/fit_ddp.py", str(run)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run)
    val_acc = column(rows, "val/acc")
    assert len(val_acc) == 2  # logged once per epoch, by rank zero only
    # the checkpoint reloads into a single-process model that reproduces the logged accuracy
    model = MLP.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    x, _, y_true = MNIST1D().probe_set(None, "test")
    with torch.no_grad():
        acc = (model(x).argmax(1) == y_true).float().mean().item()
    assert abs(acc - val_acc[-1]) < 1e-6
    # each rank trained on half the data: 2 epochs x 20 steps of 100 samples per rank (0-based)
    assert column(rows, "train/loss") and int([r for r in rows if r.get("train/loss")][-1]["step"]) == 39
    assert len(column(rows, "test/acc")) == 1 and not (run / "run.lock").exists()

"""What a new user trips over: packaged fragments, short callback names, the test split at the
end of fit, a quiet console with one line per epoch in logs, the end-of-fit summary, and the
registry of extra subcommands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from overparam_lit import cli
from overparam_lit.cli import main, register_command, resolve_config_args, resolve_fragment
from overparam_lit.data import MNIST1D
from overparam_lit.fragments import FRAGMENTS, fragment_names
from overparam_lit.models import MLP
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import ConfigError

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--wandb.mode", "disabled",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_fit_ends_with_the_test_split(tmp_path: Path) -> None:
    run = tmp_path / "run"
    main(["fit", *COMMON, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run)])
    rows = RunFolder(run).read_metrics()
    test = [r for r in rows if r.get("test/acc")]
    assert len(test) == 1 and test[0]["test/loss"]
    # an independent evaluation of the final weights on the clean test labels
    model = MLP.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    x, _, y_true = MNIST1D().probe_set(None, "test")
    with torch.no_grad():
        out = model(x)
    acc = (out.argmax(1) == y_true).float().mean().item()
    assert float(test[0]["test/acc"]) == pytest.approx(acc, abs=1e-6)
    assert float(test[0]["test/loss"]) == pytest.approx(
        torch.nn.functional.cross_entropy(out, y_true).item(), rel=1e-5)
    off = tmp_path / "off"
    main(["fit", *COMMON, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(off),
          "--test_after_fit", "false"])
    assert not any(k.startswith("test/") for k in RunFolder(off).read_metrics()[0])


def test_fragments_are_packaged_and_used_when_the_path_is_missing(tmp_path: Path, monkeypatch) -> None:
    names = fragment_names()
    repo_files = sorted(str(p.relative_to(REPO)) for d in ("callbacks", "configs")
                        for p in (REPO / d).glob("*.yaml"))
    assert names == repo_files and "callbacks/imp.yaml" in names
    for name in names:  # the packaged copy is the repository file
        assert (FRAGMENTS / name).read_bytes() == (REPO / name).read_bytes(), name
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"overparam_lit.fragments" = ["callbacks/*.yaml", "configs/*.yaml"]' in pyproject  # in wheels
    monkeypatch.chdir(tmp_path)
    assert resolve_fragment("callbacks/imp.yaml") == str(FRAGMENTS / "callbacks" / "imp.yaml")
    assert resolve_fragment("callbacks/nope.yaml") == "callbacks/nope.yaml"  # the parser names it
    (tmp_path / "callbacks").mkdir()
    (tmp_path / "callbacks" / "imp.yaml").write_text("# mine\n")
    assert resolve_fragment("callbacks/imp.yaml") == "callbacks/imp.yaml"  # a local file wins
    argv = ["fit", "-c", "configs/quickstart.yaml", "--config=configs/toy2d_spirals.yaml"]
    assert resolve_config_args(argv) == ["fit", "-c", str(FRAGMENTS / "configs" / "quickstart.yaml"),
                                         f"--config={FRAGMENTS / 'configs' / 'toy2d_spirals.yaml'}"]


def test_short_callback_names_in_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--trainer.callbacks.help", "HessianProbe"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Help for --trainer.callbacks.help=overparam_lit.callbacks" in out and "lanczos_iters" in out


def test_console_of_a_logged_fit_from_another_folder(tmp_path: Path) -> None:
    """A fit whose output goes to a file, started outside the repository with the README's
    fragment paths: one line per epoch, no advertisement or W&B warning, a summary at the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "NETRC": str(tmp_path / "none")}
    env.pop("WANDB_SILENT", None)
    env.pop("WANDB_API_KEY", None)
    argv = ["fit", "-c", "configs/quickstart.yaml", "--model.width", "8", "--trainer.max_epochs", "2",
            "--trainer.log_every_n_steps", "50", "--trainer.default_root_dir", "run"]
    proc = subprocess.run([sys.executable, "-m", "overparam_lit", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, both = proc.stdout, proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split("  ")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"] and "val/acc" in lines[0]
    assert "\r" not in both and "Tip:" not in both and "logging interval" not in both
    assert "anonymous" not in both.lower() and "LeafSpec" not in both
    run = tmp_path / "run"
    assert f"Run folder: {Path('run')}" in out and "Final: train/acc" in out and "test/acc" in out
    offline = RunFolder(run).wandb_offline_runs()
    assert len(offline) == 1 and f"wandb sync {Path('run') / 'wandb' / offline[0].name}" in out
    assert f"Metrics: {Path('run') / 'metrics.csv'}" in out
    assert RunFolder(run).read_config()["model"]["init_args"]["depth"] == 2  # quickstart.yaml was used


def test_extra_subcommands_are_registered_and_listed(capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli.commands, "COMMANDS", {})  # the registry main and register_command read
    calls = []
    register_command("export", lambda argv: calls.append(argv) or 7, "export a run (example)")
    with pytest.raises(SystemExit) as exc:
        main(["export", "runs/x", "--to", "onnx"])
    assert exc.value.code == 7 and calls == [["runs/x", "--to", "onnx"]]
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test,predict}" in out and "other commands" in out
    assert "  export  export a run (example)" in out
    with pytest.raises(ConfigError, match="taken by a Lightning subcommand"):
        register_command("fit", lambda argv: 0)

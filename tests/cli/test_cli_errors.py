"""Bad input ends in one paragraph and exit code 2, before anything is written: unreadable
checkpoints, unusable run folders, settings Lightning or torch would refuse with a traceback,
checkpoints of another model or of an IMP run without IMP, and parser errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from overparam_lit.cli import main

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--wandb.mode", "disabled",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.max_epochs", "1"]


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file())


def refused(capsys, argv: list[str], lines: int = 1) -> str:
    """Run ``main(argv)``: exit code 2, one paragraph (``lines`` lines) on stderr, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= lines, err
    return err


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished width-8 run."""
    run = tmp_path_factory.mktemp("done") / "run"
    main(["fit", *COMMON, "--trainer.default_root_dir", str(run)])
    return run


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-level IMP run."""
    run = tmp_path_factory.mktemp("imp") / "run"
    main(["fit", *COMMON, "-c", str(REPO / "callbacks" / "imp.yaml"), "--trainer.callbacks.levels", "1",
          "--data.train_subset", "400", "--trainer.default_root_dir", str(run)])
    return run


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "empty", "folder"])
def test_unreadable_checkpoint(tmp_path: Path, capsys, done: Path, kind: str) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    good = done / "checkpoints" / "last.ckpt"
    path = folder / "last.ckpt"
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 50)
    elif kind == "truncated":
        shutil.copy(good, folder / "epoch=000.ckpt")
        path.write_bytes(good.read_bytes()[:3000])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        shutil.copy(good, folder / "epoch=000.ckpt")
        path = folder
    new = tmp_path / "new"
    err = refused(capsys, ["fit", *COMMON, "--trainer.default_root_dir", str(new), "--ckpt_path", str(path)])
    assert err.startswith("overparam-lit: error: --ckpt_path cannot be read: ")
    expect = {"corrupt": "damaged or truncated", "truncated": "damaged or truncated",
              "empty": "the file is empty (0 bytes)", "folder": "it is a folder"}[kind]
    assert expect in err and repr(str(path)) in err
    if kind in ("truncated", "folder"):
        assert f"--ckpt_path {folder / 'epoch=000.ckpt'}" in err  # the intact one beside it
    else:
        assert "No intact checkpoint" in err
    assert not new.exists()


def test_unusable_run_folders(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = refused(capsys, ["fit", *COMMON, "--trainer.default_root_dir", str(a_file)])
    assert "the run folder is a file, not a folder" in err and a_file.read_text() == "x"
    err = refused(capsys, ["fit", *COMMON, "--trainer.default_root_dir", str(a_file / "run")])
    assert "a parent of the run folder is a file" in err
    err = refused(capsys, ["fit", *COMMON, "--trainer.default_root_dir", "/proc/overparam-lit-run"])
    assert "cannot be created" in err and "/proc" in err
    assert not Path("/proc/overparam-lit-run").exists()


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_run_folder(tmp_path: Path, capsys) -> None:  # pragma: no cover - not as root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = refused(capsys, ["fit", *COMMON, "--trainer.default_root_dir", str(ro / "run")])
        assert "not writable" in err
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("args,expect", [
    (["--trainer.devices", "0"], "trainer.devices must name at least one device (got '0')"),
    (["--trainer.max_epochs", "-5"], "trainer.max_epochs must be >= -1 (got -5)"),
    (["--seed_everything", "-1"], "seed_everything must lie in [0, 2**32 - 1] (got -1)"),
    (["-c", str(REPO / "configs" / "quickstart.yaml"), "--model.init_args.optimizer.init_args.lr", "-0.1"],
     "the learning rate must be > 0 (0 leaves the weights where they start) (got -0.1)"),
    (["--model.init_args.optimizer", "torch.optim.Adam", "--model.init_args.optimizer.init_args.betas",
      "[1.5, 0.9]"], "the optimizer settings were refused: Invalid beta parameter at index 0: 1.5"),
    (["--trainer.num_nodes", "0"], "trainer settings were refused: `num_nodes` must be a positive integer"),
    (["--trainer.gradient_clip_algorithm", "foo"], "`gradient_clip_algorithm` foo is invalid"),
])
def test_settings_lightning_or_torch_would_refuse(tmp_path: Path, capsys, args: list[str],
                                                  expect: str) -> None:
    run = tmp_path / "run"
    err = refused(capsys, ["fit", *COMMON, *args, "--trainer.default_root_dir", str(run)])
    assert expect in err
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_accelerator_without_gpu(tmp_path: Path, capsys) -> None:
    err = refused(capsys, ["fit", *COMMON, "--trainer.accelerator", "gpu", "--trainer.default_root_dir",
                           str(tmp_path / "run")])
    assert "no usable CUDA GPU" in err and "--trainer.accelerator cpu" in err
    assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_model_is_refused(tmp_path: Path, capsys, done: Path) -> None:
    before = snapshot(done)
    last = str(done / "checkpoints" / "last.ckpt")
    err = refused(capsys, ["fit", *COMMON, "--model.width", "16", "--trainer.max_epochs", "2",
                           "--trainer.default_root_dir", str(done), "--ckpt_path", last])
    assert "holds a different model" in err and "model.width: checkpoint 8, config 16" in err
    # a linked value (from another data module) differs: found once the model is built
    err = refused(capsys, ["fit", *COMMON, "--data", "TeacherStudent", "--trainer.max_epochs", "2",
                           "--trainer.default_root_dir", str(tmp_path / "new"), "--ckpt_path", last])
    assert "model.input_shape: checkpoint [1, 40]" in err and "model.task" in err
    assert snapshot(done) == before and not (tmp_path / "new").exists()


def test_imp_checkpoint_without_imp_is_refused(capsys, imp_run: Path) -> None:
    before = snapshot(imp_run)
    err = refused(capsys, ["fit", *COMMON, "--data.train_subset", "400", "--trainer.max_epochs", "3",
                           "--trainer.default_root_dir", str(imp_run),
                           "--ckpt_path", str(imp_run / "checkpoints" / "last.ckpt")])
    assert "IterativeMagnitudePruning" in err and "pruned weights would come back" in err
    assert "-c callbacks/imp.yaml" in err
    assert snapshot(imp_run) == before


def test_parser_errors_print_the_message_first(tmp_path: Path, capsys) -> None:
    err = refused(capsys, ["fit", *COMMON, "--model.widht", "3"])
    assert err.startswith("overparam-lit fit: error: MLP has no option 'widht'; did you mean 'width'?")
    assert "usage:" not in err and err.rstrip().endswith("(full parser message: OVERPARAM_LIT_DEBUG=1)")
    fragments = ["-c", str(REPO / "configs" / "quickstart.yaml"),
                 "-c", str(REPO / "callbacks" / "hessian.yaml")]
    err = refused(capsys, ["fit", *fragments, "--trainer.callbacks.levels", "3"])
    assert err.startswith("overparam-lit fit: error: ")
    assert "--trainer.callbacks.levels was applied to HessianProbe" in err
    assert "levels is an option of IterativeMagnitudePruning (callbacks/imp.yaml)" in err
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0 and "usage:" in capsys.readouterr().out

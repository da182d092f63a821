"""Epoch checkpoints of a run folder: atomic, in write order, and only the last one waits for
the disk (a killed process cannot lose what it wrote; see tests/cli/test_cli_resume.py for kills)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from overparam_lit.cli import main
from overparam_lit.utils import atomic_write, durable, fsync_deferred


def test_fsync_deferred_skips_fsync_inside_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    atomic_write(tmp_path / "a", lambda tmp: Path(tmp).write_text("a"))
    assert len(calls) == 2 and durable()  # the file, then its folder
    with fsync_deferred():
        assert not durable()
        atomic_write(tmp_path / "b", lambda tmp: Path(tmp).write_text("b"))
    assert len(calls) == 2 and durable()
    assert (tmp_path / "b").read_text() == "b"


def test_only_the_last_checkpoint_of_a_fit_waits_for_the_disk(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    main(["fit", "--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--data.num_samples", "300",
          "--trainer.max_epochs", "3", "--wandb.mode", "disabled", "--trainer.enable_progress_bar", "false",
          "--test_after_fit", "false", "--trainer.default_root_dir", str(run)])
    ckpts = [p for p in synced if "/checkpoints/" in p and p.endswith(".tmp")]
    assert len(ckpts) == 2, synced  # epoch=002.ckpt and last.ckpt of the end of the fit, not epochs 0, 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3

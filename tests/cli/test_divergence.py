"""A loss that becomes NaN stops the fit at that very step (also inside a call of several steps), and
the message names the last checkpoint before it or says that none exists; a loss that stays finite
but grows a million-fold ends with a warning in the summary."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from overparam_lit.cli import main
from overparam_lit.models.divergence import LOSS_GROWTH_LIMIT
from overparam_lit.stopping import DIVERGED_EXIT_CODE

COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--seed_everything", "0",
          "--data.num_samples", "1000", "--data.batch_size", "50", "--trainer.max_epochs", "3",
          "--wandb.mode", "disabled", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false"]  # 16 steps an epoch

HOOKS = '''
import lightning as L
import torch


class NanAfter(L.Callback):
    """Makes the first weight of ``members`` (all: None) NaN right after optimizer step ``step``
    and counts the optimizer steps taken."""

    def __init__(self, step: int = 1, members: list[int] | None = None):
        self.step, self.members, self.taken = step, members, 0

    def on_train_start(self, trainer, pl_module):
        type(self).last = self
        opt = trainer.optimizers[0]
        original = opt.step

        def step(*args, **kwargs):
            out = original(*args, **kwargs)
            self.taken += 1
            if self.taken == self.step:
                weight = next(pl_module.net.parameters())
                with torch.no_grad():
                    if self.members is None:
                        weight.fill_(float("nan"))
                    else:
                        weight[self.members] = float("nan")
            return out
        opt.step = step
'''


@pytest.fixture()
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "nanhooks.py").write_text(HOOKS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import nanhooks

    return importlib.reload(nanhooks)


def diverged(run: Path, *extra: str, capfd) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *COMMON, "--trainer.default_root_dir", str(run),
              "--trainer.callbacks+=nanhooks.NanAfter", *extra])
    assert exit_.value.code == DIVERGED_EXIT_CODE == 3  # its own code: not bad input (2)
    line = capfd.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("overparam-lit: training diverged: the training loss became NaN")
    return line


@pytest.mark.parametrize("k", ["1", "8"])
def test_nan_stops_the_fit_at_its_step(tmp_path: Path, hooks, capfd, k: str) -> None:
    """Weights NaN after step 21 (inside the third call of 8 steps): the loss of the next batch is
    NaN, which is step 21's loss, and no further optimizer step is taken. Epoch 0's checkpoint is
    named, and its weights are finite."""
    run = tmp_path / "run"
    line = diverged(run, "--model.steps_per_call", k, "--trainer.callbacks.step", "21", capfd=capfd)
    assert "the training loss became NaN or infinite at step 21 (epoch 1); the fit stopped" in line
    assert hooks.NanAfter.last.taken == 21
    ckpt = run / "checkpoints" / "last.ckpt"
    assert f"the last checkpoint before it is {ckpt} (its weights are finite)" in line
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 16 and all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_nan_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path: Path, hooks, capfd) -> None:
    line = diverged(tmp_path / "run", "--trainer.callbacks.step", "3", capfd=capfd)
    assert "at step 3 (epoch 0)" in line and "no checkpoint was written before it" in line
    assert hooks.NanAfter.last.taken == 3


def test_members_stop_when_the_last_one_diverges(tmp_path: Path, hooks, capfd) -> None:
    line = diverged(tmp_path / "run", "--model.seeds", "[0, 1]", "--trainer.callbacks.step", "5",
                    "--trainer.callbacks.members", "[0, 1]", capfd=capfd)
    assert "at step 5 (epoch 0) for every member (first: member 0 at step 5)" in line
    assert hooks.NanAfter.last.taken == 5


def test_a_million_fold_growth_is_a_warning_in_the_summary(tmp_path: Path, capfd) -> None:
    """Adam at lr 1e10 keeps the loss finite but huge: the fit ends, and the summary says by how
    much the loss grew over its first step's (in the checkpoint) to its largest epoch mean (in
    metrics.csv)."""
    run = tmp_path / "run"
    main(["fit", *COMMON, "--model.optimizer", "torch.optim.Adam", "--model.optimizer.lr", "1e10",
          "--trainer.default_root_dir", str(run)])
    out = capfd.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("Warning: the training loss grew"))
    with open(run / "metrics.csv", newline="") as fh:
        losses = [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["first_train_loss"][0]
    assert 2.0 < first < 2.6  # cross-entropy of 10 classes at initialisation, about ln 10
    worst = max(losses)
    assert worst / first > LOSS_GROWTH_LIMIT
    assert f"grew {worst / first:.3g}-fold" in line and f"({first:.4g} -> {worst:.4g}" in line


def test_an_ordinary_fit_has_no_growth_warning(tmp_path: Path, capfd) -> None:
    main(["fit", *COMMON, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run")])
    assert "Warning: the training loss grew" not in capfd.readouterr().out

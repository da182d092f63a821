"""One test per private Lightning API used through :mod:`overparam_lit.compat`: a Lightning
upgrade that changes one of them fails here, by name."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from overparam_lit.checkpointing import EpochBoundary, RunCheckpoint
from overparam_lit.compat import (
    TESTED_LIGHTNING,
    count_inner_steps,
    drop_wandb_anonymous,
    fresh_optimizers,
    mark_epoch_boundary,
    save_checkpoints_now,
    set_epoch_calls,
    set_val_due,
    settle_ddp_buckets,  # noqa: F401  (run by tests/ddp/settle_buckets.py)
    wandb_run_if_started,
)

REPO = Path(__file__).resolve().parents[2]


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=gen)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def trainer(tmp_path: Path, callbacks: list, epochs: int = 2, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", **kwargs)


def test_fresh_optimizers_replaces_the_running_optimizer(tmp_path: Path) -> None:
    seen = []

    class Restart(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                old = trainer.optimizers[0]
                fresh_optimizers(trainer, pl_module)
                new = trainer.optimizers[0]
                seen.append((old is new, len(old.state), len(new.state)))

    trainer(tmp_path, [Restart()], enable_checkpointing=False).fit(Tiny(), loader())
    assert seen == [(False, 2, 0)]  # a new Adam without moments; the old one had them for w and b


def test_save_checkpoints_now_writes_topk_and_last(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    cb = RunCheckpoint(ck)  # a ModelCheckpoint that saves nothing by itself before the end
    seen = []

    class SaveNow(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                save_checkpoints_now(cb, trainer, epoch=41)
                seen.append(sorted(p.name for p in ck.iterdir()))
                seen.append((Path(cb.best_model_path).name, Path(cb.last_model_path).name))

    trainer(tmp_path, [SaveNow(), cb], epochs=2).fit(Tiny(), loader())
    assert seen == [["epoch=041.ckpt", "last.ckpt"], ("epoch=041.ckpt", "last.ckpt")]
    assert torch.load(ck / "last.ckpt", weights_only=True)["global_step"] == 8  # the end of fit


def test_save_checkpoints_now_serialises_once_and_copies_last(tmp_path: Path) -> None:
    """last.ckpt holds the bytes of the top-k file (one serialisation) in a file of its own, with
    the state a separate save would hold; the next save leaves no other file behind."""
    ck = tmp_path / "ck"
    cb = RunCheckpoint(ck)
    saved: list[str] = []
    states = []

    class Count(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            saved.append(trainer.current_epoch)

    class SaveNow(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch in (1, 2):
                del saved[:]
                save_checkpoints_now(cb, trainer, epoch=trainer.current_epoch - 1)
                files = sorted(p.name for p in ck.iterdir())
                top = ck / f"epoch={trainer.current_epoch - 1:03d}.ckpt"
                assert files == [top.name, "last.ckpt"] and len(saved) == 1, (files, saved)
                assert top.read_bytes() == (ck / "last.ckpt").read_bytes()
                assert not os.path.samefile(top, ck / "last.ckpt")
                state = torch.load(ck / "last.ckpt", weights_only=False)
                states.append(state["callbacks"][cb.state_key])

    trainer(tmp_path, [SaveNow(), Count(), cb], epochs=3).fit(Tiny(), loader())
    for state in states:  # as a separate save of last.ckpt would have recorded it
        assert Path(state["last_model_path"]).name == "last.ckpt"
        assert Path(state["best_model_path"]).name.startswith("epoch=")


def test_mark_epoch_boundary_resumes_with_the_next_epoch(tmp_path: Path) -> None:
    """RunCheckpoint saves at the next epoch's start with the mark; the resume trains every epoch."""
    fake = {"loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 3, "started": 2},
                                                      "current": {"ready": 3, "started": 2}}}}}
    mark_epoch_boundary(fake)
    assert fake["loops"]["fit_loop"]["epoch_progress"]["total"] == {"ready": 2, "started": 2}
    ck, boundary = tmp_path / "ck", tmp_path / "boundary.ckpt"

    class Keep(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:  # EpochBoundary has just saved epoch 0's checkpoint
                shutil.copy(ck / "last.ckpt", boundary)

    trainer(tmp_path, [EpochBoundary(), Keep(), RunCheckpoint(ck)], epochs=2).fit(Tiny(), loader())
    saved = torch.load(boundary, weights_only=True)
    progress = saved["loops"]["fit_loop"]["epoch_progress"]
    assert saved["global_step"] == 4 and progress["total"]["ready"] == progress["total"]["started"] == 1
    steps = []

    class Count(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            steps.append(trainer.current_epoch)

    resumed = tmp_path / "resumed"
    trainer(resumed, [Count(), RunCheckpoint(resumed / "ck")], epochs=3).fit(Tiny(), loader(),
                                                                            ckpt_path=boundary)
    assert steps == [1] * 4 + [2] * 4  # both remaining epochs train all 4 batches


def test_drop_wandb_anonymous(tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    assert "anonymous" in logger._wandb_init
    drop_wandb_anonymous(logger)
    assert "anonymous" not in logger._wandb_init


def test_wandb_run_if_started(tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    assert wandb_run_if_started(logger) is None  # asking does not start a run
    run = logger.experiment
    try:
        assert wandb_run_if_started(logger) is run and run.offline
    finally:
        run.finish()


def test_lightning_is_within_the_tested_range() -> None:
    text = (REPO / "pyproject.toml").read_text()
    low, high = re.search(r'"lightning>=([\d.]+),<([\d.]+)"', text).groups()
    assert (low, high) == ("2.6", "2.7") and TESTED_LIGHTNING == ("2.6", "2.6")
    version = tuple(int(p) for p in L.__version__.split(".")[:2])
    assert tuple(int(p) for p in low.split(".")) <= version < tuple(int(p) for p in high.split("."))


def test_set_epoch_calls_ends_the_epoch_after_that_many_lightning_steps(tmp_path: Path) -> None:
    seen = []

    class Two(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            set_epoch_calls(trainer, 2)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append((trainer.current_epoch, batch_idx))

    trainer(tmp_path, [Two()], epochs=2, enable_checkpointing=False).fit(Tiny(), loader())
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1)]  # 2 of the loader's 4 batches an epoch


def test_set_val_due_validates_after_the_chosen_step(tmp_path: Path) -> None:
    seen = []

    class AfterSecond(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            set_val_due(trainer, batch_idx == 1)  # decided before the epoch loop's check

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                seen.append(trainer.global_step)

    class Validated(Tiny):
        def validation_step(self, batch, batch_idx):
            return None

    trainer(tmp_path, [AfterSecond()], epochs=1, enable_checkpointing=False,
            num_sanity_val_steps=0).fit(Validated(), loader(), loader())
    assert seen == [2]  # not at the epoch's end (step 4)


def test_count_inner_steps_advances_global_step_and_the_loggers_step(tmp_path: Path) -> None:
    seen = []

    class Count(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 0:
                before = (trainer.global_step, trainer.fit_loop.epoch_loop._batches_that_stepped)
                count_inner_steps(trainer, 3)
                after = (trainer.global_step, trainer.fit_loop.epoch_loop._batches_that_stepped)
                seen.append((before, after))

    trainer(tmp_path, [Count()], epochs=1, enable_checkpointing=False).fit(Tiny(), loader())
    assert seen == [((1, 0), (4, 3))]


def test_settle_ddp_buckets_lets_ddp_rebuild_after_two_backward_passes() -> None:
    script = REPO / "tests" / "ddp" / "settle_buckets.py"
    run = lambda flag: subprocess.run([sys.executable, str(script), flag], cwd=REPO,  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    assert run("1").returncode == 0
    unsettled = run("0")  # the failure the shim prevents: DDP's reducer asserts on the second pass
    assert unsettled.returncode != 0 and "rebuilt" in unsettled.stderr


def test_cheap_cuda_checks_drops_lightnings_nvml_check_only_without_gpus(monkeypatch) -> None:
    from overparam_lit.compat import NVML_CHECK, cheap_cuda_checks

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setenv(NVML_CHECK, "1")  # what `import lightning` sets
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert not cheap_cuda_checks() and os.environ[NVML_CHECK] == "1"  # GPUs: keep fork safety
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert cheap_cuda_checks() and NVML_CHECK not in os.environ
    import lightning.fabric  # noqa: F401

    assert not cheap_cuda_checks()  # nothing left to drop

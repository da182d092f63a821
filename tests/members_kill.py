"""A stacked fit that can kill itself with SIGKILL after a checkpoint, and resume (test_members)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP
from overparam_lit.testing import tiny_trainer


class KillAt(L.Callback):
    """SIGKILL at the start of epoch ``epoch`` (the previous epoch's checkpoint is on disk)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("epochs", type=int)
    p.add_argument("--kill-after", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = MLP(width=16, seeds=[0, 1, 2], input_shape=(1, 40))
    ckpt = ModelCheckpoint(dirpath=str(args.root / "checkpoints"), save_last=True, every_n_epochs=1,
                           save_top_k=-1)
    callbacks = [ckpt] + ([KillAt(args.kill_after)] if args.kill_after is not None else [])
    trainer = tiny_trainer(args.root, callbacks, max_epochs=args.epochs, enable_checkpointing=True)
    resume = str(args.root / "checkpoints" / "last.ckpt") if args.resume else None
    trainer.fit(model, MNIST1D(batch_size=50, train_subset=200), ckpt_path=resume)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.root / "final.pt")


if __name__ == "__main__":
    main()

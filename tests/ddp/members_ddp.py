"""Two CPU processes (gloo) train a stacked MLP of two seeds (used by test_members.py)."""

import sys
from pathlib import Path

import lightning as L
import torch

from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP
from overparam_lit.testing import tiny_trainer

if __name__ == "__main__":
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = MLP(width=16, seeds=[0, 1], input_shape=(1, 40))
    trainer = tiny_trainer(root, max_epochs=2, devices=2, strategy="ddp")
    trainer.fit(model, MNIST1D(batch_size=50, train_subset=200))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               root / f"rank{trainer.global_rank}.pt")
    trainer.save_checkpoint(root / "last.ckpt")

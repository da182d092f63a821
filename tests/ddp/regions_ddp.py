"""Two-process CPU DDP run of DecisionRegions; writes its run folder to argv[1]."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from overparam_lit.callbacks.regions import DecisionRegions
from overparam_lit.models import MLP
from overparam_lit.testing import THREE_BLOBS, Blobs, tiny_trainer


def main() -> None:
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = MLP(width=16, input_shape=(1, 8), num_classes=3)
    cb = DecisionRegions(num_planes=2, resolution=16, schedule="every", render_planes=0)
    trainer = tiny_trainer(root, [cb], max_epochs=2, devices=2, strategy="ddp",
                           logger=CSVLogger(str(root), name="", version=""))
    trainer.fit(model, datamodule=Blobs(**THREE_BLOBS, batch_size=20, label_noise=0.2))
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), root / "final.pt")
    (root / f"rank{trainer.global_rank}.done").write_text("ok")


if __name__ == "__main__":
    main()

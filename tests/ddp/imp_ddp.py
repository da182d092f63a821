"""Two-process CPU DDP run of IMP; each rank saves its masks and weights to argv[1]/rank{r}.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from overparam_lit.callbacks.imp import IterativeMagnitudePruning
from overparam_lit.testing import Blobs, small_mlp, tiny_trainer


class Desync(L.Callback):
    """Perturbs rank 1's weights at each level end: without the broadcast its masks would differ."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank == 1 and trainer.current_epoch < trainer.max_epochs - 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    cb = IterativeMagnitudePruning(levels=2, fraction=0.5, epochs_per_level=1, rewind_step=1)
    tr = tiny_trainer(out, [cb, Desync()], max_epochs=1, devices=2, strategy="ddp")
    model = small_mlp()
    tr.fit(model, Blobs(batch_size=25))
    torch.save({"masks": cb.masks, "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "snapshot": cb.snapshot, "history": cb.history},
               out / f"rank{tr.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

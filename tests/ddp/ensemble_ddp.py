"""Two-process CPU DDP fit of a SeedEnsemble; each rank saves its parameters to argv[1]/rank{r}.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from overparam_lit.data import TeacherStudent
from overparam_lit.models import SeedEnsemble


def main(out: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    model = SeedEnsemble(seeds=[0, 1, 2], width=6, depth=1, input_shape=(2,), num_classes=1,
                         task="regression", success_threshold=0.5,
                         optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    trainer = L.Trainer(default_root_dir=str(out), max_epochs=2, accelerator="cpu", devices=2,
                        strategy="ddp", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, TeacherStudent(input_dim=2, teacher_width=4, n_train=400, n_test=100, batch_size=50))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

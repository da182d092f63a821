"""Two-process CPU DDP run of DecisionRegions; writes its run folder to argv[1]."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from regions_helpers import Blobs  # noqa: E402

from overparam_lit.callbacks.regions import DecisionRegions  # noqa: E402
from overparam_lit.models import MLP  # noqa: E402


def main() -> None:
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = MLP(width=16, input_shape=(1, 8), num_classes=3)
    cb = DecisionRegions(num_planes=2, resolution=16, schedule="every", render_planes=0)
    trainer = L.Trainer(
        default_root_dir=str(root), max_epochs=2, accelerator="cpu", devices=2, strategy="ddp",
        logger=CSVLogger(str(root), name="", version=""), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[cb],
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=Blobs(batch_size=20, label_noise=0.2))
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), root / "final.pt")
    (root / f"rank{trainer.global_rank}.done").write_text("ok")


if __name__ == "__main__":
    main()

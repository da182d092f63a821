"""Benchmark: one decision-region snapshot (64 planes at 128 x 128) of the MNIST-1D MLP of
width 256, against one training epoch of the same model measured in the same process.

    python scripts/bench_regions.py [--planes 64] [--resolution 128] [--width 256]

The snapshot is what ``DecisionRegions`` does at a scheduled epoch: label maps on every
grid point (1,048,576 forward passes), fragmentation, agreement with the previous map, the
``.npz`` file and one picture of 4 planes. The last line is JSON with ``seconds`` (snapshot)
and ``epoch_fraction`` (snapshot time / one training epoch, validation excluded).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP
from overparam_lit.regions import (
    agreement,
    boundary_fraction,
    cohen_kappa,
    fragmentation,
    label_maps,
    make_plane_bank,
    render,
)
from overparam_lit.utils import atomic_save_npz


class EpochTimer(L.Callback):
    """Wall time of each training epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--planes", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16384, help="grid points per forward")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs; the last is timed")
    args = ap.parse_args()

    L.seed_everything(0, verbose=False)
    dm = MNIST1D(batch_size=100, label_noise=0.15)
    model = MLP(width=args.width, depth=2, input_shape=(1, 40), num_classes=10)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            default_root_dir=tmp, max_epochs=args.epochs, accelerator="auto", devices=1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
        )
        trainer.fit(model, datamodule=dm)
        epoch_s = timer.times[-1]
        device = trainer.strategy.root_device

        x, y, yt = dm.probe_set(None, "train")
        t0 = time.perf_counter()
        bank = make_plane_bank(x, y, yt, num_planes=args.planes, resolution=args.resolution,
                               policy="distinct_classes", seed=0)
        bank_s = time.perf_counter() - t0
        model.to(device)
        prev = np.zeros((args.planes, args.resolution, args.resolution), dtype=np.int16)

        t0 = time.perf_counter()
        maps = label_maps(model, bank, batch_size=args.batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        frag = fragmentation(maps.pred, 10)
        extra = (agreement(prev, maps.pred), cohen_kappa(prev, maps.pred, 10),
                 boundary_fraction(maps.pred))
        t2 = time.perf_counter()
        atomic_save_npz(Path(tmp) / "maps.npz", region_counts=frag.counts, **maps.arrays())
        render.plane_grid([maps.pred], bank, [0, 1, 2, 3], 10, ["snapshot"],
                          Path(tmp) / "snapshot.png", confidences=[maps.confidence])
        t3 = time.perf_counter()
    seconds = t3 - t0
    result = {
        "planes": args.planes,
        "resolution": args.resolution,
        "points": bank.num_points,
        "width": args.width,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "bank_seconds": round(bank_s, 4),
        "maps_seconds": round(t1 - t0, 4),
        "metrics_seconds": round(t2 - t1, 4),
        "save_and_picture_seconds": round(t3 - t2, 4),
        "epoch_seconds": round(epoch_s, 4),
        "fragmentation": round(frag.mean_normalised, 4),
        "kappa_vs_zero_map": round(extra[1], 4),
        "seconds": round(seconds, 4),
        "epoch_fraction": round(seconds / epoch_s, 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

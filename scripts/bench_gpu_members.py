"""Members on a GPU: the 16-member MNIST-1D speedup, and a CIFAR-shaped CNN widths x seeds fit.

Meant for one short run on a machine with a CUDA GPU (at most about 8 minutes):

1. per-model speedup of a 16-member MNIST-1D MLP fit (width 100, depth 2, batch 100, Adam)
   against a plain PyTorch loop training one such model for the same steps on the same GPU;
2. one stacked fit of the Nakkiran CNN at widths k in [1, 2, 4, 8, 16] x 4 seeds (20 members) on
   synthetic CIFAR-shaped tensors (3x32x32, 10 classes, 10000 samples, batch 128) against the same
   20 single fits one after another.

Both sides of each comparison run in this process on the same device; fits are timed over
``Trainer.fit``. The last line is JSON.

    python scripts/bench_gpu_members.py [--epochs 3] [--cnn-epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import lightning as L
import torch

from overparam_lit.data import MNIST1D
from overparam_lit.data.base import ArrayDataModule
from overparam_lit.models import CNN, MLP

WIDTHS, SEEDS = [1, 2, 4, 8, 16], [0, 1, 2, 3]


class SyntheticCIFAR(ArrayDataModule):
    """Random CIFAR-shaped tensors (3x32x32, 10 classes): the cost of CIFAR without the files."""

    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, n: int = 10_000, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.n = n

    def load(self) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return {"x_train": torch.randn(self.n, 3, 32, 32, generator=g),
                "y_train": torch.randint(0, 10, (self.n,), generator=g),
                "x_test": torch.randn(1000, 3, 32, 32, generator=g),
                "y_test": torch.randint(0, 10, (1000,), generator=g)}


def fit(model: L.LightningModule, dm: L.LightningDataModule, epochs: int) -> float:
    trainer = L.Trainer(max_epochs=epochs, accelerator="gpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tempfile.mkdtemp())
    torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.fit(model, dm)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def plain_mlp(x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    net = MLP(width=100, depth=2, input_shape=(1, 40), num_classes=10).net.cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = x.cuda(), y.cuda()
    perm = torch.randperm(x.shape[0], device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(steps):
        i = s % (x.shape[0] // 100)
        idx = perm[i * 100:(i + 1) * 100]
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cnn-epochs", type=int, default=2)
    args = p.parse_args()
    assert torch.cuda.is_available(), "this script measures a GPU"
    dm = MNIST1D(batch_size=100)
    dm.setup()
    x, y, _ = dm.splits["train"]
    steps = args.epochs * (x.shape[0] // 100)
    plain_mlp(x, y, 50)  # warm-up
    t_plain = min(plain_mlp(x, y, steps) for _ in range(2))
    L.seed_everything(0, verbose=False)
    fit(MLP(width=100, depth=2, seeds=16, input_shape=(1, 40)), MNIST1D(batch_size=100), 1)  # warm-up
    L.seed_everything(0, verbose=False)
    stack = MLP(width=100, depth=2, seeds=16, input_shape=(1, 40),
                optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2))
    t_stack = fit(stack, MNIST1D(batch_size=100), args.epochs)
    mlp_speedup = 16 * t_plain / t_stack
    print(f"MNIST-1D MLP: one plain model {t_plain:.2f} s, 16 members {t_stack:.2f} s -> "
          f"{mlp_speedup:.2f}x per model", flush=True)

    cifar = SyntheticCIFAR(batch_size=128)
    L.seed_everything(0, verbose=False)
    t_packed = fit(CNN(widths=WIDTHS, seeds=SEEDS, input_shape=(3, 32, 32)), cifar, args.cnn_epochs)
    print(f"CNN widths {WIDTHS} x seeds {SEEDS}: one fit {t_packed:.1f} s", flush=True)
    t_single = 0.0
    for w in WIDTHS:
        for s in SEEDS:
            L.seed_everything(s, verbose=False)
            t_single += fit(CNN(width=w, input_shape=(3, 32, 32)), SyntheticCIFAR(batch_size=128),
                            args.cnn_epochs)
    print(f"the same 20 single fits one after another: {t_single:.1f} s", flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(0),
                      "mlp16_per_model_speedup": round(mlp_speedup, 3),
                      "cnn_widths_seeds_speedup": round(t_single / t_packed, 3),
                      "cnn_packed_s": round(t_packed, 2), "cnn_sequential_s": round(t_single, 2)}))


if __name__ == "__main__":
    main()

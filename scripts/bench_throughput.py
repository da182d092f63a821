"""Training throughput of the framework against a plain PyTorch loop on the same tensors.

Trains the MNIST-1D MLP (width 256, depth 2, batch 100, Adam lr 1e-3, 5 epochs) twice in one
process: once through ``Trainer.fit`` with the framework's data module (progress bar, CSV
logger and epoch metrics on, validation off), once through a minimal loop over the same
in-memory tensors (alternating, best of ``--repeats`` each). Prints samples/s for both; the
last line is JSON with ``"ratio"`` (framework / plain). Each side is timed over its whole
call (``Trainer.fit`` including its start-up).

    python scripts/bench_throughput.py [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP

WIDTH, BATCH, LR = 256, 100, 1e-3


def plain_loop(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    """Minimal PyTorch training loop; returns wall seconds."""
    torch.manual_seed(seed)
    net = MLP(width=WIDTH, depth=2, input_shape=(1, 40), num_classes=10).net
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0] - BATCH + 1, BATCH):
            idx = perm[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def framework_fit(dm: MNIST1D, epochs: int, seed: int, root: str) -> float:
    """The framework's fit with its own data path and logging; returns wall seconds."""
    L.seed_everything(seed, verbose=False)
    model = MLP(width=WIDTH, depth=2, input_shape=dm.input_shape, num_classes=dm.num_classes,
                optimizer=lambda p: torch.optim.Adam(p, lr=LR))
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=CSVLogger(root, name="", version=""),
        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, log_every_n_steps=50,
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dm = MNIST1D(batch_size=BATCH)
    dm.setup()
    x, y, _ = dm.splits["train"]
    samples = args.epochs * (x.shape[0] // BATCH) * BATCH
    plain_loop(x, y, 1, 0)  # warm-up
    with tempfile.TemporaryDirectory() as root:
        framework_fit(dm, 1, 0, root)  # warm-up
        plain, framework = float("inf"), float("inf")
        for s in range(args.repeats):  # interleaved, so background load hits both sides alike
            plain = min(plain, plain_loop(x, y, args.epochs, s))
            framework = min(framework, framework_fit(dm, args.epochs, s, root))
    plain_sps, framework_sps = samples / plain, samples / framework
    print(f"plain PyTorch loop : {plain_sps:10.0f} samples/s ({plain:.3f} s)")
    print(f"overparam-lit fit  : {framework_sps:10.0f} samples/s ({framework:.3f} s)")
    print(json.dumps({"plain_samples_per_s": round(plain_sps), "framework_samples_per_s":
                      round(framework_sps), "ratio": round(framework_sps / plain_sps, 3)}))


if __name__ == "__main__":
    main()

"""Training throughput of the framework against a plain PyTorch loop on the same tensors.

Trains the MNIST-1D MLP (width 256, depth 2, batch 100, Adam lr 1e-3, 5 epochs) in one process:
through the framework (``configs/quickstart.yaml`` built by the CLI: its data module, CSV
logger, progress bar and epoch metrics; validation and checkpointing off), through a minimal
PyTorch loop over the same in-memory tensors, and through a bare LightningModule (Lightning's
own per-step cost, for reference). The framework runs with its default ``steps_per_call``
(``auto``: several optimizer steps per Lightning step) and with 1. Runs alternate, best of
``--repeats`` each; each is timed over its whole call (``Trainer.fit`` including its start-up).
Prints samples/s; the last line is JSON with ``"ratio"`` (framework / plain),
``"ratio_steps_per_call_1"`` and ``"bare_lightning_ratio"``. A one-epoch framework fit after each
round splits the framework's time into a fixed cost per fit and a cost per epoch (a line fitted
through the one- and the ``--epochs``-epoch fit), printed beside the plain loop's epoch.

    python scripts/bench_throughput.py [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from overparam_lit.cli import OverparamCLI
from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP

WIDTH, BATCH, LR = 256, 100, 1e-3
REPO = Path(__file__).resolve().parents[1]


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


def framework_fit(epochs: int, seed: int, root: str, steps_per_call: str = "auto") -> float:
    """``configs/quickstart.yaml`` (MLP 2x256, Adam 1e-3, batch 100) built by the framework's CLI
    with its loggers (CSV; W&B off), progress bar and epoch metrics; validation and
    checkpointing off, as in the plain loop. Returns the wall seconds of ``trainer.fit``."""
    cli = OverparamCLI(run=False, args=["--model.steps_per_call", steps_per_call,
        "-c", str(REPO / "configs" / "quickstart.yaml"), "--seed_everything", str(seed),
        "--trainer.max_epochs", str(epochs), "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", root, "--wandb.mode", "disabled", "--threads", "1",
    ])
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    return time.perf_counter() - start


class BareModule(L.LightningModule):
    """The least a Lightning fit can do: forward, loss, Adam; nothing logged."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP(width=WIDTH, depth=2, input_shape=(1, 40), num_classes=10).net

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR)


def bare_lightning_fit(dm: MNIST1D, epochs: int, seed: int) -> float:
    """Lightning's own per-step cost: a bare module, no logger, bar or callbacks."""
    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(BareModule(), dm)
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
    best = {"plain": float("inf"), "framework": float("inf"), "framework_k1": float("inf"),
            "bare": float("inf"), "framework_1_epoch": float("inf")}
    with tempfile.TemporaryDirectory() as root:
        framework_fit(1, 0, f"{root}/warm")  # warm-up
        for s in range(args.repeats):  # interleaved, so background load hits all sides alike
            best["plain"] = min(best["plain"], plain_loop(x, y, args.epochs, s))
            best["framework"] = min(best["framework"], framework_fit(args.epochs, s, f"{root}/{s}"))
            one = framework_fit(args.epochs, s, f"{root}/k1-{s}", "1")
            best["framework_k1"] = min(best["framework_k1"], one)
            best["bare"] = min(best["bare"], bare_lightning_fit(dm, args.epochs, s))
            if args.epochs > 1:  # after the round's fits, so it changes none of them
                one = framework_fit(1, s, f"{root}/e1-{s}")
                best["framework_1_epoch"] = min(best["framework_1_epoch"], one)
    sps = {k: samples / best[k] for k in ("plain", "framework", "framework_k1", "bare")}
    print(f"plain PyTorch loop    : {sps['plain']:10.0f} samples/s ({best['plain']:.3f} s)")
    print(f"overparam-lit fit     : {sps['framework']:10.0f} samples/s ({best['framework']:.3f} s)")
    print(f"  steps_per_call 1    : {sps['framework_k1']:10.0f} samples/s ({best['framework_k1']:.3f} s)")
    print(f"bare Lightning module : {sps['bare']:10.0f} samples/s ({best['bare']:.3f} s)")
    split = {}
    if args.epochs > 1:
        epoch = (best["framework"] - best["framework_1_epoch"]) / (args.epochs - 1)
        split = {"framework_fixed_ms": round(1e3 * (best["framework_1_epoch"] - epoch), 1),
                 "framework_epoch_ms": round(1e3 * epoch, 1),
                 "plain_epoch_ms": round(1e3 * best["plain"] / args.epochs, 1)}
        print(f"  framework: {split['framework_fixed_ms']:.1f} ms per fit + {split['framework_epoch_ms']:.1f}"
              f" ms per epoch (plain loop: {split['plain_epoch_ms']:.1f} ms per epoch)")
    print(json.dumps({"plain_samples_per_s": round(sps["plain"]),
                      "framework_samples_per_s": round(sps["framework"]),
                      "bare_lightning_samples_per_s": round(sps["bare"]),
                      "bare_lightning_ratio": round(sps["bare"] / sps["plain"], 3),
                      "ratio_steps_per_call_1": round(sps["framework_k1"] / sps["plain"], 3),
                      **split,
                      "ratio": round(sps["framework"] / sps["plain"], 3)}))


if __name__ == "__main__":
    main()

"""Cost of masked training (IMP levels, ticket starts) against dense training of the same model.

Trains the MNIST-1D MLP (width 256, depth 2, batch 100) in one process, once dense and once
with masks at density 0.2 kept by the same machinery IMP uses (gradients of pruned entries
zeroed before each step, weights re-masked after it), alternating with the order swapped every
repeat, best of ``--repeats`` each. Time is the process CPU time of the training loop
(``on_train_start`` to ``on_train_end``) with one torch thread, so other jobs on a shared
machine barely disturb it; no progress bar or logger, validation off. It also checks that the
pruned weights stayed exactly zero.

Two optimizers are timed. SGD with momentum 0.9 and weight decay measures the masking itself
(``"ratio"``). Adam (``"ratio_adam"``) adds a CPU effect of sparsity, not of the masking: the
Adam moments of pruned weights are exactly zero, and ``sqrt(0)`` in torch's CPU kernel is
several times slower than ``sqrt`` of a positive number on some processors (AMD EPYC here),
which costs Adam's step about 25% at density 0.2. GPUs have no such penalty, and neither has
torch's fused CPU Adam (``fused: true`` in the optimizer's YAML), timed as ``"ratio_adam_fused"``.
The last line is JSON with ``"ratio"`` (masked / dense). Goal: <= 1.05.

    python scripts/bench_imp.py [--epochs 4] [--repeats 6] [--width 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

from overparam_lit import pruning
from overparam_lit.callbacks.ticket import TicketStart
from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP


class Timer(L.Callback):
    """Wall time of the training loop."""

    def on_train_start(self, trainer, pl_module):
        self.start, self.wall_start = time.process_time(), time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.process_time() - self.start
        self.wall = time.perf_counter() - self.wall_start


OPTIMIZERS = {
    "sgd": partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adam": partial(torch.optim.Adam, lr=1e-3),
    "adam_fused": partial(torch.optim.Adam, lr=1e-3, fused=True),
}


def make_model(width: int, optimizer: str = "sgd") -> MLP:
    torch.manual_seed(0)
    return MLP(width=width, depth=2, input_shape=(1, 40), num_classes=10, optimizer=OPTIMIZERS[optimizer])


def run(dm: MNIST1D, width: int, epochs: int, ticket: Path | None,
        optimizer: str = "sgd") -> tuple[float, MLP, TicketStart | None]:
    timer = Timer()
    callbacks: list[L.Callback] = [timer]
    ts = None
    if ticket is not None:
        ts = TicketStart(ticket=str(ticket), mode="ticket", eval_splits=())
        callbacks.append(ts)
    model = make_model(width, optimizer)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(default_root_dir=root, max_epochs=epochs, accelerator="cpu", devices=1,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, callbacks=callbacks)
        trainer.fit(model, dm)
    return timer.seconds, model, ts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--density", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dm = MNIST1D(batch_size=100)
    dm.setup()
    steps = args.epochs * len(dm.splits["train"][0]) // 100
    result = {"density": args.density, "width": args.width, "epochs": args.epochs, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        ticket = Path(tmp) / "level"
        model = make_model(args.width)
        params = {p.name: dict(model.named_parameters())[p.name].detach()
                  for p in pruning.prunable_weights(model, include_output=False)}
        masks = pruning.magnitude_prune(params, pruning.full_masks(params), args.density, "global")
        ticket.mkdir()
        torch.save(masks, ticket / "mask.pt")
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, ticket / "rewind.pt")
        run(dm, args.width, 1, None)  # warm-up
        for opt in ("adam", "adam_fused", "sgd"):
            dense, masked = [], []
            for rep in range(args.repeats):
                for kind in ("dense", "masked") if rep % 2 == 0 else ("masked", "dense"):
                    if kind == "dense":
                        dense.append(run(dm, args.width, args.epochs, None, opt)[0])
                        continue
                    t, m, ts = run(dm, args.width, args.epochs, ticket, opt)
                    masked.append(t)
                    named = dict(m.named_parameters())
                    assert all(bool((named[n][~k] == 0).all()) for n, k in ts.masks.items())
            print(f"{opt:10s} dense : best {min(dense):.3f} s ({steps / min(dense):.0f} steps/s)")
            print(f"{opt:10s} masked: best {min(masked):.3f} s ({steps / min(masked):.0f} steps/s)")
            key = {"sgd": "ratio", "adam": "ratio_adam", "adam_fused": "ratio_adam_fused"}[opt]
            result.update({key: min(masked) / min(dense), f"{opt}_dense_s": min(dense),
                           f"{opt}_masked_s": min(masked)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()

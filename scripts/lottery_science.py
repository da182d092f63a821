"""Lottery-ticket science check on MNIST-1D: IMP tickets against their random controls.

For each seed: one IMP run (the recipe of configs/lottery_mnist1d.yaml: MLP 2x100, Adam lr 1e-2,
``--epochs`` per level, 20% of the remaining hidden weights per level, output layer at 10%,
rewind to initialisation) for ``--levels`` levels; then
from the levels whose density is <= 0.2, the controls ``random_reinit`` (same mask, fresh
init) and ``random_mask`` (same per-layer density, random positions) and ``perturb_rest`` (dense
net, ticket weights kept, the others re-drawn), each trained for the same epochs through
``TicketStart``. Test accuracy at the end of training (no early stopping). Prints a table and,
last, one JSON line; writes ``<out>/lottery_science.json``.

The MNIST-1D paper (Greydanus 2020) reports about 74% at 90% sparsity for magnitude-pruned
tickets against about 66% dense and about 65% for random pruning.

    python scripts/lottery_science.py [--seeds 0 1 2] [--levels 10] [--epochs 40] [--out runs/lottery]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

from overparam_lit.callbacks.imp import IterativeMagnitudePruning
from overparam_lit.callbacks.ticket import TicketStart
from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP
from overparam_lit.utils import atomic_write_json

CONTROLS = ("random_reinit", "random_mask", "perturb_rest")


def make_model(lr: float) -> MLP:
    return MLP(width=100, depth=2, input_shape=(1, 40), num_classes=10,
               optimizer=partial(torch.optim.Adam, lr=lr))


def fit(root: Path, callback: L.Callback, epochs: int, seed: int, lr: float) -> None:
    L.seed_everything(seed, verbose=False)
    model = make_model(lr)
    trainer = L.Trainer(default_root_dir=str(root), max_epochs=epochs, accelerator="cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[callback])
    trainer.fit(model, MNIST1D(batch_size=100, val_size=500, shuffle_seed=seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--max-density", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=Path("runs/lottery_science"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    rows: list[dict] = []
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        imp = IterativeMagnitudePruning(levels=args.levels, fraction=0.2, epochs_per_level=args.epochs,
                                        output_fraction=0.1, rewind="weights", rewind_step=0)
        fit(root / "imp", imp, args.epochs, seed, args.lr)
        summary = json.loads((root / "imp" / "imp" / "summary.json").read_text())
        for lv in summary["levels"]:
            rows.append({"seed": seed, "level": lv["level"], "density": lv["density"], "mode": "imp",
                         "val_acc": lv["val/acc"], "test_acc": lv["test/acc"]})
            if lv["density"] > args.max_density:
                continue
            ticket = root / "imp" / "imp" / f"level_{lv['level']:02d}"
            for mode in CONTROLS:
                run = root / f"{mode}_L{lv['level']:02d}"
                fit(run, TicketStart(str(ticket), mode=mode, seed=1000 + seed), args.epochs, seed, args.lr)
                res = json.loads((run / "imp" / "ticket_result.json").read_text())
                rows.append({"seed": seed, "level": lv["level"], "density": res["density"], "mode": mode,
                             "val_acc": res["val/acc"], "test_acc": res["test/acc"]})
        print(f"seed {seed} done after {time.time() - start:.0f} s", flush=True)

    def mean(mode: str, level: int) -> float:
        return statistics.mean(r["test_acc"] for r in rows if r["mode"] == mode and r["level"] == level)

    levels = sorted({r["level"] for r in rows})
    table, sparse = [], []
    print(f"{'level':>5} {'density':>8} {'ticket':>7} " + " ".join(f"{m:>13}" for m in CONTROLS))
    for level in levels:
        dens = statistics.mean(r["density"] for r in rows if r["mode"] == "imp" and r["level"] == level)
        line = {"level": level, "density": dens, "ticket": mean("imp", level)}
        has_controls = any(r["mode"] == "random_reinit" and r["level"] == level for r in rows)
        if has_controls:
            line.update({m: mean(m, level) for m in CONTROLS})
            sparse.append(line)
        table.append(line)
        ctrl = " ".join(f"{line[m]:13.3f}" for m in CONTROLS) if has_controls else ""
        print(f"{level:5d} {dens:8.3f} {line['ticket']:7.3f} {ctrl}")
    beats = all(x["ticket"] > x["random_reinit"] and x["ticket"] > x["random_mask"] for x in sparse)
    result = {"seeds": args.seeds, "epochs_per_level": args.epochs, "dense_test_acc": table[0]["ticket"],
              "sparse_levels": sparse, "tickets_beat_controls": beats, "rows": rows,
              "seconds": time.time() - start}
    atomic_write_json(result, args.out / "lottery_science.json")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()

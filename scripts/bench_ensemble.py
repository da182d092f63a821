"""Benchmark: 32 seeds of a width-8 teacher-student student trained together vs one seed alone.

Both arms run the same number of Adam steps on the same data, in this process, one thread,
alternating repeats (minimum time kept):

* ``single``: one ordinary ``MLP(width=8)`` network (``nn.Sequential``), minibatch Adam loop;
* ``ensemble``: a :class:`~overparam_lit.escape.StackedEnsemble` of 32 seeds, each with its own
  batch order, same loop.

It also times the Lightning path (``SeedEnsemble`` with 32 seeds vs an ``MLP`` fit, same steps).
The last printed line is JSON with ``"ratio"`` (32-seed time / 1-seed time of the plain loop)
and ``"lightning_ratio"``; the goal is ``ratio <= 4``.

    python scripts/bench_ensemble.py [--seeds 32] [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings

import torch
from torch import nn

from overparam_lit.escape import StackedEnsemble, make_teacher_data, seed_nets


def _loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seeds: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    n = x.shape[0]
    gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
    ensemble = isinstance(model, StackedEnsemble)
    t0 = time.perf_counter()
    perms, pos = None, n
    for _ in range(steps):
        if pos + batch > n:
            perms, pos = torch.stack([torch.randperm(n, generator=g) for g in gens]), 0
        idx = perms[:, pos : pos + batch] if ensemble else perms[0, pos : pos + batch]
        pos += batch
        out = model(x[idx])
        losses = (out - y[idx]).pow(2).flatten(1 if ensemble else 0).mean(-1)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
    return time.perf_counter() - t0


def _lightning(seeds: int, epochs: int, n_train: int, batch: int) -> float:
    import lightning as L

    from overparam_lit.data import TeacherStudent
    from overparam_lit.models import MLP
    from overparam_lit.models.ensemble import SeedEnsemble

    kw = dict(width=8, depth=1, input_shape=(2,), num_classes=1, task="regression",
              optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    model = SeedEnsemble(seeds=seeds, **kw) if seeds > 1 else MLP(**kw)
    dm = TeacherStudent(input_dim=2, teacher_width=4, n_train=n_train, n_test=100, batch_size=batch)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            default_root_dir=root, accelerator="cpu")
        t0 = time.perf_counter()
        trainer.fit(model, dm)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = make_teacher_data(2, 4, "relu", n_train=args.n_train, n_test=10)
    x, y = data.x_train, data.y_train

    def single_net() -> nn.Module:
        return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))

    times: dict[str, list[float]] = {"single": [], "ensemble": [], "l_single": [], "l_ensemble": []}
    epochs = max(1, args.steps * args.batch // args.n_train)
    for _ in range(args.repeats):
        times["single"].append(_loop(seed_nets(single_net, [0])[0], x, y, args.steps, args.batch, 1))
        ens = StackedEnsemble(seed_nets(single_net, range(args.seeds)))
        times["ensemble"].append(_loop(ens, x, y, args.steps, args.batch, args.seeds))
        times["l_single"].append(_lightning(1, epochs, args.n_train, args.batch))
        times["l_ensemble"].append(_lightning(args.seeds, epochs, args.n_train, args.batch))
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:>10}: {v:.3f} s")
    print(json.dumps({
        "seeds": args.seeds, "steps": args.steps, "batch": args.batch, "width": 8,
        "single_s": round(best["single"], 4), "ensemble_s": round(best["ensemble"], 4),
        "ratio": round(best["ensemble"] / best["single"], 3),
        "lightning_epochs": epochs, "lightning_single_s": round(best["l_single"], 4),
        "lightning_ensemble_s": round(best["l_ensemble"], 4),
        "lightning_ratio": round(best["l_ensemble"] / best["l_single"], 3),
        "goal": "ratio <= 4",
    }))


if __name__ == "__main__":
    main()

"""Decision-region fragmentation across a width sweep of the MNIST-1D MLP with label noise.

The decision-region account of double descent (Somepalli et al., CVPR 2022) predicts that
fragmentation peaks near the interpolation threshold (the narrowest net that fits the noisy
training labels) and is lower for narrow and for wide nets. This script trains one MLP per
width on the same data, evaluates every net on the same saved plane banks, and writes

    OUT/results.json      per width: train accuracy on noisy labels, clean test error,
                          fragmentation (normalised and raw) on each bank, boundary fraction
    OUT/banks/*.pt        the plane banks (reused when present, so reruns see the same planes)
    OUT/sweep.png         accuracy, test error and fragmentation against width
    OUT/planes_*.png      the same planes for every width

    python scripts/regions_width_sweep.py OUT [--widths 4 8 16 ...] [--epochs 1500]
    python scripts/regions_width_sweep.py OUT --merge A/results.json B/results.json

``--merge`` averages finished sweeps (for example one per seed, run as separate jobs) and
draws ``sweep.png`` for the mean without training anything.

Training is a plain Adam loop over the data module's tensors (full control of the budget on
small CPUs); the nets are ``overparam_lit.models.MLP`` networks, the data ``MNIST1D`` with
``uniform_incorrect`` label noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP
from overparam_lit.regions import (
    PlaneBank,
    boundary_fraction,
    fragmentation,
    label_maps,
    make_plane_bank,
    render,
)
from overparam_lit.utils import atomic_write_json


def train(model: MLP, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr: float,
          seed: int) -> list[tuple[int, float]]:
    """Adam on mini-batches; returns (epoch, train accuracy on y) every 100 epochs."""
    opt = torch.optim.Adam(model.net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    curve = []
    model.net.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            loss = model.loss(model.net(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % 100 == 0 or epoch == epochs:
            acc = accuracy(model, x, y)
            curve.append((epoch, acc))
    return curve


@torch.no_grad()
def accuracy(model: MLP, x: torch.Tensor, y: torch.Tensor) -> float:
    model.net.eval()
    acc = float((model.net(x).argmax(1) == y).float().mean())
    model.net.train()
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--widths", type=int, nargs="+",
                    default=[4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512])
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1500)
    ap.add_argument("--train-subset", type=int, default=1000)
    ap.add_argument("--label-noise", type=float, default=0.15)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--planes", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--min-region-size", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="results.json files of finished sweeps to average and plot")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        results = [r for f in args.merge for r in json.loads(f.read_text())["results"]]
        banks = sorted({k.split("/")[0] for k in results[0] if k.endswith("/fragmentation")})
        summary = summarise(results, banks, args)
        summary["seeds"] = sorted({r["seed"] for r in results})
        atomic_write_json({"merged": [str(f) for f in args.merge], "summary": summary,
                           "results": results}, out / "results.json")
        plot(results, summary, banks, out, args.label_noise)
        print(json.dumps({k: v for k, v in summary.items() if k != "mean"}))
        return

    dm = MNIST1D(train_subset=args.train_subset, label_noise=args.label_noise,
                 noise_model="uniform_incorrect")
    x, y, y_true = dm.probe_set(None, "train")
    xt, _, yt_true = dm.probe_set(None, "test")
    banks: dict[str, PlaneBank] = {}
    for policy in ("distinct_classes", "mislabelled"):
        path = out / "banks" / f"{policy}_{args.planes}x{args.resolution}.pt"
        if path.exists():
            banks[policy] = PlaneBank.load(path)
        else:
            banks[policy] = make_plane_bank(x, y, y_true, args.planes, args.resolution, policy,
                                            margin=0.5, seed=0)
            banks[policy].save(path)

    results: list[dict] = []
    preds: dict[tuple[str, int, int], np.ndarray] = {}
    for seed in args.seeds:
        for width in args.widths:
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            model = MLP(width=width, depth=args.depth, input_shape=(1, 40), num_classes=10)
            curve = train(model, x, y, args.epochs, args.batch_size, args.lr, seed)
            row = {
                "seed": seed, "width": width, "num_params": model.num_params,
                "train_acc_noisy": accuracy(model, x, y),
                "train_acc_clean": accuracy(model, x, y_true),
                "test_error": 1.0 - accuracy(model, xt, yt_true),
                "train_curve": curve,
            }
            for name, bank in banks.items():
                maps = label_maps(model.net, bank)
                frag = fragmentation(maps.pred, 10, args.min_region_size)
                row[f"{name}/fragmentation"] = frag.mean_normalised
                row[f"{name}/fragmentation_raw"] = frag.mean_raw
                row[f"{name}/boundary_fraction"] = boundary_fraction(maps.pred)
                preds[(name, seed, width)] = maps.pred
            row["seconds"] = round(time.perf_counter() - t0, 2)
            results.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in row.items() if k != "train_curve"}), flush=True)
            atomic_write_json({"args": {k: str(v) for k, v in vars(args).items()},
                               "results": results}, out / "results.json")

    summary = summarise(results, list(banks), args)
    atomic_write_json({"args": {k: str(v) for k, v in vars(args).items()},
                       "summary": summary, "results": results}, out / "results.json")
    plot(results, summary, list(banks), out, args.label_noise)
    show = sorted({args.widths[0], summary["threshold_width"] or args.widths[-1],
                   args.widths[-1], *args.widths[:: max(1, len(args.widths) // 5)]})
    for name, bank in banks.items():
        render.plane_grid([preds[(name, args.seeds[0], w)] for w in show], bank, [0, 1, 2, 3],
                          10, [f"width {w}" for w in show], out / f"planes_{name}.png",
                          suptitle=f"{name} planes, seed {args.seeds[0]}")
    print(json.dumps(summary))


def summarise(results: list[dict], banks: list[str], args: argparse.Namespace) -> dict:
    """Mean over seeds per width, the interpolation threshold and where fragmentation peaks."""
    widths = sorted({r["width"] for r in results})
    mean = {}
    for w in widths:
        rows = [r for r in results if r["width"] == w]
        mean[w] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]
                   if isinstance(rows[0][k], float)}
    threshold = next((w for w in widths if mean[w]["train_acc_noisy"] >= 0.99), None)
    out = {"widths": widths, "threshold_width": threshold, "mean": mean}
    for b in banks:
        key = f"{b}/fragmentation"
        out[f"{b}/peak_width"] = max(widths, key=lambda w: mean[w][key])
    return out


def plot(results: list[dict], summary: dict, banks: list[str], out: Path, noise: float) -> None:
    from matplotlib.figure import Figure

    from overparam_lit.utils import atomic_savefig

    widths = summary["widths"]
    mean = summary["mean"]
    fig = Figure(figsize=(11, 3.4))
    ax = fig.subplots(1, 3)
    ax[0].plot(widths, [mean[w]["train_acc_noisy"] for w in widths], "o-",
               label="train acc (noisy labels)")
    ax[0].plot(widths, [mean[w]["test_error"] for w in widths], "s-", label="test error (clean)")
    ax[0].set_ylabel("fraction")
    def std(key: str) -> list[float]:
        return [float(np.std([r[key] for r in results if r["width"] == w])) for w in widths]

    for b, marker in zip(banks, "o^", strict=False):
        for a, key in ((ax[1], f"{b}/fragmentation"), (ax[2], f"{b}/fragmentation_raw")):
            a.errorbar(widths, [mean[w][key] for w in widths], yerr=std(key), fmt=marker + "-",
                       capsize=2, label=b)
    ax[1].set_ylabel("regions per class present (normalised)")
    ax[2].set_ylabel("regions per plane (raw)")
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xlabel("MLP width")
        if summary["threshold_width"]:
            a.axvline(summary["threshold_width"], color="grey", ls="--", lw=1)
        a.legend(fontsize=7)
    seeds = sorted({r["seed"] for r in results})
    fig.suptitle(f"MNIST-1D MLP, {noise:.0%} label noise, mean of {len(seeds)} seed(s): "
                 "fragmentation across width (bars: std over seeds; dashed: interpolation "
                 "threshold)", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, out / "sweep.png", dpi=120)


if __name__ == "__main__":
    main()

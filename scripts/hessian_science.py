"""Science check of the Hessian probes on the MNIST-1D MLP.

Trains the quickstart-style MLP with SGD and probes the Hessian of the training loss on a
fixed probe set at log-spaced steps. Two findings from the literature should reappear:

* the fraction of negative eigenvalues (the index) falls as the training loss falls
  (Dauphin et al. 2014: critical points with high loss have many descent directions);
* a few outlier eigenvalues stand above the bulk, about as many as classes
  (Sagun et al. 2017; Papyan 2020: C or C - 1 outliers for C classes).

Writes ``<out>/hessian_science.png`` and ``<out>/hessian_science.json``; the last printed line
is the JSON summary (Spearman correlation of loss and index, outlier counts).

    python scripts/hessian_science.py [--width 128] [--epochs 30] [--out runs/hessian_science]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from torch import nn  # noqa: E402

from overparam_lit.callbacks.hessian import log_spaced_steps  # noqa: E402
from overparam_lit.curvature import HessianOperator, count_outliers, hessian_spectrum  # noqa: E402
from overparam_lit.data import MNIST1D  # noqa: E402
from overparam_lit.models import MLP  # noqa: E402
from overparam_lit.utils import atomic_savefig, atomic_write_json  # noqa: E402

CE = nn.functional.cross_entropy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--probe", type=int, default=1000)
    ap.add_argument("--probes", type=int, default=12)
    ap.add_argument("--top", type=int, default=30, help="Lanczos eigenvalues for the outliers")
    ap.add_argument("--eps", type=float, default=1e-2, help="negative: below -eps * lambda_max")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/hessian_science")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    dm = MNIST1D(batch_size=100)
    x_tr, y_tr, _ = dm.probe_set(None, "train")
    xp, yp, _ = dm.probe_set(args.probe, "train", args.seed)
    net = MLP(width=args.width, depth=2, activation="relu").net
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    steps_per_epoch = x_tr.shape[0] // 100
    total = args.epochs * steps_per_epoch
    probe_at = {0, *log_spaced_steps(total, args.probes)}
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    step = 0
    for _epoch in range(args.epochs + 2):
        order = torch.randperm(x_tr.shape[0], generator=gen)
        for b in range(steps_per_epoch):
            if step in probe_at:
                net.eval()
                op = HessianOperator(net, CE, xp, yp)
                s = hessian_spectrum(op, op.dim, k=args.top, lanczos_iters=200, tol=1e-4,
                                     slq_runs=8, slq_iters=80, negative_eps=args.eps,
                                     seed=args.seed)
                loss, _ = op.loss_and_gradient()
                rows.append({
                    "step": step, "loss": loss, "lambda_max": s.lambda_max,
                    "lambda_min": s.lambda_min, "negative_fraction": s.negative_fraction,
                    "trace": s.trace, "outliers": count_outliers(s.top, max_count=args.top - 1),
                    "top": s.top.tolist(), "num_hvps": s.num_hvps,
                })
                last = s
                r = rows[-1]
                print(f"step {step:5d} loss {loss:.4f} lambda_max {s.lambda_max:8.3f} "
                      f"lambda_min {s.lambda_min:8.4f} neg_frac {s.negative_fraction:.4f} "
                      f"outliers {r['outliers']:2d} hvps {s.num_hvps}", flush=True)
                net.train()
            if step >= total:
                break
            idx = order[b * 100 : (b + 1) * 100]
            opt.zero_grad()
            CE(net(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
            step += 1
        if step >= total and total not in probe_at - {r["step"] for r in rows}:
            break

    loss = np.array([r["loss"] for r in rows])
    neg = np.array([r["negative_fraction"] for r in rows])
    rho = float(spearmanr(loss, neg).statistic)
    outliers = [r["outliers"] for r in rows]
    late = outliers[len(outliers) // 2 :]
    out = Path(args.out)
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = np.array([max(r["step"], 0.5) for r in rows])
    ax[0].semilogx(steps, loss, "o-", label="training loss (probe set)")
    ax0 = ax[0].twinx()
    ax0.semilogx(steps, neg, "s-", color="C3", label="negative fraction")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("loss")
    ax0.set_ylabel(f"fraction below -{args.eps:g} lambda_max", color="C3")
    ax[0].set_title(f"index falls with the loss (Spearman {rho:.2f})", fontsize=9)
    ax[1].plot(loss, neg, "o-")
    ax[1].set_xlabel("training loss")
    ax[1].set_ylabel("negative fraction")
    ax[1].set_title("negative fraction against loss", fontsize=9)
    top = np.array(rows[-1]["top"])
    ax[2].semilogy(np.arange(1, top.size + 1), np.maximum(top, 1e-6), "o")
    ax[2].axvline(rows[-1]["outliers"] + 0.5, color="C3", lw=0.8)
    ax[2].set_xlabel("index i")
    ax[2].set_ylabel("lambda_i")
    ax[2].set_title(f"top-{top.size} at step {rows[-1]['step']}: {rows[-1]['outliers']} outliers "
                    f"(10 classes)", fontsize=9)
    fig.suptitle(f"MNIST-1D MLP 2 x {args.width}, SGD lr {args.lr}, {last.dim} parameters",
                 fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, out / "hessian_science.png", dpi=120)
    summary = {
        "spearman_loss_vs_negative_fraction": rho,
        "negative_fraction_first": float(neg[0]), "negative_fraction_last": float(neg[-1]),
        "loss_first": float(loss[0]), "loss_last": float(loss[-1]),
        "outliers_per_probe": outliers, "outliers_median_late": float(np.median(late)),
        "num_classes": 10, "negative_eps": args.eps, "figure": str(out / "hessian_science.png"),
    }
    atomic_write_json({"summary": summary, "probes": rows}, out / "hessian_science.json")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

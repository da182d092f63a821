"""Teacher-student multi-start: how often does a student of each width fit the teacher?

A teacher with ``r*`` hidden ReLU units (the :class:`~overparam_lit.data.TeacherStudent` teacher,
2-D Gaussian inputs, 10^4 noiseless samples) labels the data; students of widths
``r*, r*+1, r*+2, 2r*, 4r*, 8r*`` are trained with MSE from ``--seeds`` random initialisations
each, all seeds of one width at once as a :class:`~overparam_lit.escape.StackedEnsemble`
(minibatch Adam, each seed its own batch order). A seed succeeds when its final training loss
divided by the target variance is below ``--threshold``. Writes ``escape_success.png`` (success
probability against width with 95% Wilson intervals) and ``escape_success.json``; the last line
printed is the JSON summary.

    python scripts/escape_success.py [--r-star 4] [--seeds 50] [--steps 4000] [--out runs/escape_success]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from overparam_lit.escape import StackedEnsemble, make_teacher_data, seed_nets, success_interval  # noqa: E402
from overparam_lit.escape.ensemble import fit_ensemble  # noqa: E402
from overparam_lit.escape.teacher import ACTIVATIONS  # noqa: E402
from overparam_lit.utils import atomic_savefig, atomic_write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r-star", type=int, default=4)
    parser.add_argument("--widths", type=int, nargs="*", default=None,
                        help="default: r*, r*+1, r*+2, 2r*, 4r*, 8r*")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--activation", default="relu", choices=list(ACTIVATIONS))
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--lr-final", type=float, default=1e-4)
    parser.add_argument("--threshold", type=float, default=5e-3)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", default="runs/escape_success")
    args = parser.parse_args()
    torch.set_num_threads(1)
    r = args.r_star
    widths = args.widths or [r, r + 1, r + 2, 2 * r, 4 * r, 8 * r]
    data = make_teacher_data(2, r, args.activation, args.n_train, 1000, args.data_seed)
    act = ACTIVATIONS[args.activation]
    rows = []
    for w in widths:
        t0 = time.perf_counter()
        nets = seed_nets(lambda w=w: nn.Sequential(nn.Linear(2, w), act(), nn.Linear(w, 1)),
                         range(args.seeds))
        ens = StackedEnsemble(nets)
        final, _ = fit_ensemble(ens, data.x_train, data.y_train, args.steps, lr=args.lr,
                                batch_size=args.batch, order_seeds=range(args.seeds),
                                lr_final=args.lr_final)
        rel = (final / data.target_variance).tolist()
        k = sum(v < args.threshold for v in rel)
        p, lo, hi = success_interval(k, args.seeds)
        rows.append({"width": w, "successes": k, "seeds": args.seeds, "p": p, "low": lo, "high": hi,
                     "relative_losses": rel, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"width {w:3d}: {k}/{args.seeds} succeed (p={p:.2f}, 95% CI [{lo:.2f}, {hi:.2f}]), "
              f"median rel. loss {sorted(rel)[len(rel) // 2]:.1e}, {rows[-1]['seconds']} s", flush=True)
    out = Path(args.out)
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.2))
    xs = [row["width"] for row in rows]
    ax[0].errorbar(xs, [row["p"] for row in rows],
                   yerr=[[row["p"] - row["low"] for row in rows], [row["high"] - row["p"] for row in rows]],
                   marker="o", capsize=3)
    ax[0].set_xscale("log", base=2)
    ax[0].set_xticks(xs, [str(v) for v in xs])
    ax[0].set_ylim(-0.02, 1.02)
    ax[0].set_xlabel("student width")
    ax[0].set_ylabel(f"P(loss/var < {args.threshold:g})")
    ax[0].set_title(f"teacher r*={r} ({args.activation}), {args.seeds} seeds/width")
    for row in rows:
        ax[1].scatter([row["width"]] * len(row["relative_losses"]), row["relative_losses"], s=4, alpha=0.5)
    ax[1].axhline(args.threshold, color="k", lw=0.8, ls="--")
    ax[1].set_xscale("log", base=2)
    ax[1].set_yscale("log")
    ax[1].set_xticks(xs, [str(v) for v in xs])
    ax[1].set_xlabel("student width")
    ax[1].set_ylabel("final loss / target variance")
    fig.tight_layout()
    atomic_savefig(fig, out / "escape_success.png", dpi=90)
    summary = {"r_star": r, "activation": args.activation, "threshold": args.threshold,
               "steps": args.steps, "batch": args.batch, "n_train": args.n_train,
               "target_variance": data.target_variance,
               "success": {str(row["width"]): [row["successes"], row["seeds"], round(row["low"], 3),
                                               round(row["high"], 3)] for row in rows}}
    atomic_write_json({**summary, "rows": rows}, out / "escape_success.json")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Ticket perturbation on teacher-student: does a wide student's success live in its ticket?

A ReLU teacher with ``r*`` hidden units (the :class:`~overparam_lit.data.TeacherStudent` teacher, 2-D
Gaussian inputs, 10^4 samples) labels the data; ``--seeds`` students of width ``--width`` (default
``4 r*``) train together (:class:`~overparam_lit.escape.StackedEnsemble`, minibatch Adam, each seed its
own batch order). Inside each one, the magnitude ticket (one shot, ``--density`` of every weight
matrix, :func:`overparam_lit.escape.tickets.ticket_masks`) is kept at its initial values and the
student is retrained, same batch order, with the rest of the net ``removed`` (the ticket alone),
``reinit`` (re-drawn) or ``perturbed`` (initial value + ``sigma * std(layer) * N(0, 1)``, ``sigma`` in
``--sigmas``; ``sigma = 0`` is the original run). A run succeeds when its final loss / target
variance is below ``--threshold``; rates are over the seeds whose original run succeeded (95% Wilson
intervals). Writes ``escape_ticket_perturb.png`` and ``.json``; the last line is the JSON summary.

    python scripts/escape_ticket_perturb.py [--r-star 4] [--seeds 32] [--out runs/escape_ticket_perturb]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from overparam_lit.escape import make_teacher_data, seed_nets, success_interval  # noqa: E402
from overparam_lit.escape.tickets import fit_masked, ticket_masks, ticket_start  # noqa: E402
from overparam_lit.utils import atomic_savefig, atomic_write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r-star", type=int, default=4)
    parser.add_argument("--width", type=int, default=None, help="student width (default 4 r*)")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--removed-densities", type=float, nargs="*", default=[0.5, 0.75],
                        help="further ticket densities trained alone (rest removed)")
    parser.add_argument("--sigmas", type=float, nargs="*", default=[0.0, 0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--lr-final", type=float, default=1e-4)
    parser.add_argument("--threshold", type=float, default=5e-3)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", default="runs/escape_ticket_perturb")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    r = args.r_star
    w = args.width or 4 * r
    data = make_teacher_data(2, r, "relu", args.n_train, 1000, args.data_seed)
    var = data.target_variance
    seeds = list(range(args.seeds))
    inits = seed_nets(lambda: nn.Sequential(nn.Linear(2, w), nn.ReLU(), nn.Linear(w, 1)), seeds)
    kw = {"lr": args.lr, "lr_final": args.lr_final, "batch_size": args.batch}

    def fit(nets, masks, order) -> tuple[torch.Tensor, object]:
        final, ens = fit_masked(nets, masks, data.x_train, data.y_train, args.steps, order_seeds=order, **kw)
        return final / var, ens

    rel0, ens0 = fit(copy.deepcopy(inits), [None] * len(seeds), seeds)
    ok = rel0 < args.threshold
    good = [s for s in seeds if bool(ok[s])]
    print(f"width {w}: {len(good)}/{len(seeds)} seeds succeed (loss/var < {args.threshold})", flush=True)
    if not good:
        raise SystemExit("no seed succeeded: train longer (--steps) or raise --threshold")
    masks = {s: ticket_masks(ens0.member(s), args.density) for s in good}
    variants = [("removed", 0.0, args.density), ("reinit", 0.0, args.density)]
    variants += [("perturbed", s, args.density) for s in args.sigmas]
    variants += [("removed", 0.0, d) for d in args.removed_densities if d != args.density]
    results: dict[str, dict] = {}
    for mode, sigma, dens in variants:
        m = masks if dens == args.density else {s: ticket_masks(ens0.member(s), dens) for s in good}
        starts = [ticket_start(inits[s], m[s], mode, sigma=sigma, seed=10_000 + s) for s in good]
        rel, _ = fit([n for n, _ in starts], [k for _, k in starts], good)
        wins = int((rel < args.threshold).sum())
        rate, lo, hi = success_interval(wins, len(good))
        key = {"perturbed": f"perturbed_{sigma:g}", "removed": f"removed_{dens:g}"}.get(mode, mode)
        results[key] = {"mode": mode, "sigma": sigma, "density": dens, "successes": wins, "trials": len(good),
                        "rate": rate, "low": lo, "high": hi, "median_rel_loss": float(rel.median())}
        if mode == "perturbed" and sigma == 0:  # must be the original runs, bit for bit
            results[key]["max_diff_to_original"] = float((rel - rel0[good]).abs().max())
        print(json.dumps({key: results[key]}), flush=True)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.5, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    pert = [v for v in results.values() if v["mode"] == "perturbed"]
    xs = [max(v["sigma"], 0.03) for v in pert]
    ax.errorbar(xs, [v["rate"] for v in pert],
                yerr=[[v["rate"] - v["low"] for v in pert], [v["high"] - v["rate"] for v in pert]],
                marker="o", capsize=3, label="rest perturbed by sigma")
    for key, ls in ((f"removed_{args.density:g}", "--"), ("reinit", ":")):
        v = results[key]
        ax.axhline(v["rate"], ls=ls, color="gray" if v["mode"] == "removed" else "black",
                   label=f"rest {v['mode']} ({v['successes']}/{v['trials']})")
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("sigma (x std of the layer); leftmost point: sigma = 0")
    ax.set_ylabel("success rate")
    ax.set_title(f"ReLU teacher r*={r}, width {w}, ticket = {args.density:g} of each layer, "
                 f"{len(good)} seeds", fontsize=8)
    ax.legend(fontsize=7)
    alone = sorted((v for v in results.values() if v["mode"] == "removed"), key=lambda v: v["density"])
    ax2.errorbar([v["density"] for v in alone], [v["rate"] for v in alone],
                 yerr=[[v["rate"] - v["low"] for v in alone], [v["high"] - v["rate"] for v in alone]],
                 marker="s", capsize=3, color="gray")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_xlabel("ticket density (rest removed)")
    ax2.set_title("ticket alone", fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    atomic_savefig(fig, out / "escape_ticket_perturb.png", dpi=90)
    summary = {"r_star": r, "width": w, "density": args.density, "seeds": args.seeds,
               "original_successes": len(good), "threshold": args.threshold, "steps": args.steps,
               "results": results, "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(summary, out / "escape_ticket_perturb.json")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

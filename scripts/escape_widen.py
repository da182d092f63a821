"""Escape demonstration: a student stuck at a bad critical point escapes after widening by one unit.

1. A teacher with ``r*`` smooth (softplus) hidden units labels 10^4 2-D Gaussian inputs; ``--seeds``
   students of width ``r* - 1`` (which cannot fit it) train together
   (:class:`~overparam_lit.escape.StackedEnsemble`); the one with the highest final loss is
   whose smallest Hessian eigenvalue ``lambda_min`` is measured with
   :mod:`overparam_lit.curvature` (Lanczos on exact Hessian-vector products).
2. It is widened by one unit with ``duplicate`` (every unit, split ratios 0.5 and 1.5 tried):
   the function and the gradient are unchanged, and ``lambda_min`` of the widened net is
   measured again; the split with the most negative ``lambda_min`` is kept.
3. Training continues for ``--steps`` full-batch Adam steps from the widened net (nudged by
   ``--nudge`` along the bottom Hessian eigenvector) and, as the control, from the narrow net.

Writes ``escape_widen.png`` (loss curves) and ``escape_widen.json``; the last line is the JSON.

    python scripts/escape_widen.py [--r-star 4] [--seeds 20] [--out runs/escape_widen]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from overparam_lit.curvature import HessianOperator, lanczos  # noqa: E402
from overparam_lit.escape import StackedEnsemble, add_units, make_teacher_data, seed_nets  # noqa: E402
from overparam_lit.escape.ensemble import fit_ensemble  # noqa: E402
from overparam_lit.escape.teacher import ACTIVATIONS  # noqa: E402
from overparam_lit.utils import atomic_savefig, atomic_write_json  # noqa: E402

MSE = nn.functional.mse_loss


def polish(net: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int = 20) -> nn.Module:
    """L-BFGS in float64 towards a critical point."""
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=0, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = MSE(net(x), y)
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)
    return net


def probe(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, object]:
    """Loss, gradient norm, lambda_min / lambda_max and the bottom eigenvector (exact Lanczos)."""
    op = HessianOperator(net, MSE, x, y, dtype=torch.float64)
    loss, g = op.loss_and_gradient()
    lz = lanczos(op.matvec, op.dim, k=1, max_iters=op.dim, tol=0, dtype=torch.float64,
                 return_vectors=True)
    return {"loss": loss, "grad_norm": float(g.norm()), "lambda_min": float(lz.bottom[0]),
            "lambda_max": float(lz.top[0]), "bottom_vector": op.unflatten(lz.ritz_vectors[:, 1])}


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> list[float]:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    curve = []
    for _ in range(steps):
        loss = MSE(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r-star", type=int, default=4)
    parser.add_argument("--width", type=int, default=None, help="student width (default r* - 1)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--activation", default="softplus", choices=list(ACTIVATIONS))
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--pre-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--nudge", type=float, default=1e-3)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", default="runs/escape_widen")
    args = parser.parse_args()
    torch.set_num_threads(1)
    r_star, act = args.r_star, ACTIVATIONS[args.activation]
    r = args.width or r_star - 1
    data = make_teacher_data(2, r_star, args.activation, args.n_train, 100, args.data_seed)
    var = data.target_variance
    ens = StackedEnsemble(seed_nets(lambda: nn.Sequential(nn.Linear(2, r), act(), nn.Linear(r, 1)),
                                    range(args.seeds)))
    final, _ = fit_ensemble(ens, data.x_train, data.y_train, args.pre_steps, lr=1e-2, batch_size=512,
                            lr_final=1e-4)
    rel = final / var
    worst = int(rel.argmax())
    print(f"width {r}: relative losses of {args.seeds} seeds: min {float(rel.min()):.1e}, "
          f"max {float(rel.max()):.1e} (seed {worst})", flush=True)
    x, y = data.x_train.double(), data.y_train.double()
    narrow = polish(ens.member(worst).double(), x, y)
    p0 = probe(narrow, x, y)
    print(f"narrow critical point: loss/var {p0['loss'] / var:.3e}, |grad| {p0['grad_norm']:.1e}, "
          f"lambda_min {p0['lambda_min']:.2e}, lambda_max {p0['lambda_max']:.2e}", flush=True)
    best = None
    for j in range(r):
        for ratio in (0.5, 1.5):
            wide = add_units(narrow, 0, 1, "duplicate", ratio=ratio, sources=[j])
            pw = probe(wide, x, y)
            print(f"  split unit {j} ratio {ratio}: loss/var {pw['loss'] / var:.3e}, |grad| "
                  f"{pw['grad_norm']:.1e}, lambda_min {pw['lambda_min']:.2e}", flush=True)
            if best is None or pw["lambda_min"] < best[2]["lambda_min"]:
                best = (j, ratio, pw, wide)
    assert best is not None
    j, ratio, pw, wide = best
    with torch.no_grad():
        for n, p in wide.named_parameters():
            p.add_(args.nudge * pw["bottom_vector"][n])
    wide_f, narrow_f = wide.float(), copy.deepcopy(narrow).float()
    xf, yf = data.x_train, data.y_train
    curve_wide = train(wide_f, xf, yf, args.steps, args.lr)
    curve_narrow = train(narrow_f, xf, yf, args.steps, args.lr)
    zero = add_units(narrow, 0, 1, "zero", generator=torch.Generator().manual_seed(0)).float()
    curve_zero = train(zero, xf, yf, args.steps, args.lr)
    out = Path(args.out)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    steps = range(1, args.steps + 1)
    ax.plot(steps, [v / var for v in curve_narrow], label=f"width {r} (control)")
    ax.plot(steps, [v / var for v in curve_wide], label=f"width {r + 1}, duplicate unit {j}, ratio {ratio}")
    ax.plot(steps, [v / var for v in curve_zero], label=f"width {r + 1}, zero-init unit", ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Adam step after widening")
    ax.set_ylabel("training loss / target variance")
    ax.set_title(f"escape by widening (teacher r*={r_star}, {args.activation}); "
                 f"lambda_min {p0['lambda_min']:.1e} -> {pw['lambda_min']:.1e}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, out / "escape_widen.png", dpi=90)
    summary = {
        "r_star": r_star, "width": r, "activation": args.activation, "seed": worst,
        "narrow": {"rel_loss": p0["loss"] / var, "grad_norm": p0["grad_norm"],
                   "lambda_min": p0["lambda_min"], "lambda_max": p0["lambda_max"]},
        "widened": {"unit": j, "ratio": ratio, "rel_loss": pw["loss"] / var, "grad_norm": pw["grad_norm"],
                    "lambda_min": pw["lambda_min"]},
        "after_training": {"steps": args.steps, "narrow_rel_loss": curve_narrow[-1] / var,
                           "widened_rel_loss": curve_wide[-1] / var, "zero_rel_loss": curve_zero[-1] / var},
    }
    atomic_write_json(summary, out / "escape_widen.json")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

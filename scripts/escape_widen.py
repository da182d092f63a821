"""Escape demonstration: students stuck at a minimum of positive loss escape after widening by one unit.

1. A teacher with ``r*`` tanh hidden units, first-layer weights scaled by ``--teacher-scale`` (so the
   units work in their nonlinear range), labels 10^4 2-D Gaussian inputs. ``--seeds`` students of
   width ``r* - 1`` (which cannot fit it) train together (:class:`~overparam_lit.escape.StackedEnsemble`,
   full-batch Adam), then each is polished in float64 (L-BFGS, then Newton steps on the exact
   Hessian) to a critical point. Its ``lambda_min`` and ``lambda_max`` are measured with
   :mod:`overparam_lit.curvature` (Lanczos on exact Hessian-vector products): ``lambda_min >= 0``
   (relative to ``lambda_max``) and a positive loss make it a bad minimum.
2. Each polished student is widened by one unit with ``duplicate`` (every unit, split ratios 0.5 and
   1.5 tried): the function and the (zero) gradient are unchanged, and ``lambda_min`` of the widened
   net is measured again; the split with the most negative ``lambda_min`` is kept. ``zero``
   widening is measured too (it keeps the function but not the critical point: the new unit's
   outgoing weight has a gradient).
3. Training continues for ``--steps`` full-batch Adam steps from the widened net, nudged by ``--nudge``
   along the bottom Hessian eigenvector, and, as the control, from the narrow net (nudged the same
   way along its own bottom eigenvector). A seed is at a *bad minimum* when its gradient norm is
   below ``--grad-tol``, ``lambda_min >= -1e-6 lambda_max`` and its loss / target variance is above
   ``--bad-loss``; it *escapes* when the widened net's loss ends below ``--escape-factor`` times the
   plateau loss while the control stays above half of it.

Writes ``escape_widen.png`` (loss curves, every seed) and ``escape_widen.json``; the last line is the JSON.

    python scripts/escape_widen.py [--r-star 4] [--seeds 8] [--out runs/escape_widen]
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

from overparam_lit.curvature import HessianOperator, lanczos  # noqa: E402
from overparam_lit.escape import StackedEnsemble, add_units, seed_nets, teacher_net  # noqa: E402
from overparam_lit.escape.critical import polish_to_critical_point  # noqa: E402
from overparam_lit.escape.ensemble import fit_ensemble  # noqa: E402
from overparam_lit.escape.teacher import ACTIVATIONS  # noqa: E402
from overparam_lit.utils import atomic_savefig, atomic_write_json  # noqa: E402

MSE = nn.functional.mse_loss


def scaled_teacher_data(r_star: int, activation: str, scale: float, n: int, data_seed: int
                        ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Inputs ``N(0, I_2)`` and the outputs of a teacher whose first-layer weights are ``scale`` times
    those of :func:`~overparam_lit.escape.teacher_net` (seed ``data_seed + 1``)."""
    teacher = teacher_net(2, r_star, activation, seed=data_seed + 1)
    with torch.no_grad():
        teacher[0].weight.mul_(scale)
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(data_seed))
        y = teacher(x)
    return x, y, float(y.var(unbiased=False))


def probe(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, object]:
    """Loss, gradient norm, lambda_min / lambda_max and the bottom eigenvector (exact Lanczos)."""
    op = HessianOperator(net, MSE, x, y, dtype=torch.float64)
    loss, g = op.loss_and_gradient()
    lz = lanczos(op.matvec, op.dim, k=1, max_iters=op.dim, tol=0, dtype=torch.float64,
                 return_vectors=True)
    return {"loss": loss, "grad_norm": float(g.norm()), "lambda_min": float(lz.bottom[0]),
            "lambda_max": float(lz.top[0]), "bottom_vector": op.unflatten(lz.ritz_vectors[:, 1])}


def nudge(net: nn.Module, direction: dict[str, torch.Tensor], eps: float) -> nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for n, p in out.named_parameters():
            p.add_(eps * direction[n].to(p))
    return out


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
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--activation", default="tanh", choices=list(ACTIVATIONS))
    parser.add_argument("--teacher-scale", type=float, default=3.0)
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--pre-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--nudge", type=float, default=1e-2)
    parser.add_argument("--escape-factor", type=float, default=0.1)
    parser.add_argument("--grad-tol", type=float, default=1e-5)
    parser.add_argument("--bad-loss", type=float, default=1e-4)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", default="runs/escape_widen")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    r_star, act = args.r_star, ACTIVATIONS[args.activation]
    r = args.width or r_star - 1
    x, y, var = scaled_teacher_data(r_star, args.activation, args.teacher_scale, args.n_train, args.data_seed)
    ens = StackedEnsemble(seed_nets(lambda: nn.Sequential(nn.Linear(2, r), act(), nn.Linear(r, 1)),
                                    range(args.seeds)))
    pre, _ = fit_ensemble(ens, x, y, args.pre_steps, lr=1e-2, lr_final=1e-4)
    xd, yd = x.double(), y.double()
    rows, curves = [], []
    for s in range(args.seeds):
        narrow = polish_to_critical_point(ens.member(s).double(), xd, yd, stop_off_minimum=True)
        p0 = probe(narrow, xd, yd)
        is_min = p0["grad_norm"] < args.grad_tol and p0["lambda_min"] >= -1e-6 * p0["lambda_max"]
        is_bad = bool(is_min and p0["loss"] / var > args.bad_loss)
        best = None
        for j in range(r):
            for ratio in (0.5, 1.5):
                wide = add_units(narrow, 0, 1, "duplicate", ratio=ratio, sources=[j])
                pw = probe(wide, xd, yd)
                if best is None or pw["lambda_min"] < best[2]["lambda_min"]:
                    best = (j, ratio, pw, wide)
        assert best is not None
        j, ratio, pw, wide = best
        pz = probe(add_units(narrow, 0, 1, "zero", generator=torch.Generator().manual_seed(s)), xd, yd)
        c_wide = train(nudge(wide, pw["bottom_vector"], args.nudge), xd, yd, args.steps, args.lr)
        c_ctrl = train(nudge(narrow, p0["bottom_vector"], args.nudge), xd, yd, args.steps, args.lr)
        plateau = p0["loss"]
        escaped = bool(is_bad and c_wide[-1] < args.escape_factor * plateau and c_ctrl[-1] > 0.5 * plateau)
        row = {"seed": s, "pre_rel_loss": float(pre[s]) / var, "rel_loss": plateau / var,
               "grad_norm": p0["grad_norm"], "lambda_min": p0["lambda_min"], "lambda_max": p0["lambda_max"],
               "is_minimum": bool(is_min), "bad_minimum": is_bad, "split_unit": j, "split_ratio": ratio,
               "widened_rel_loss": pw["loss"] / var, "widened_grad_norm": pw["grad_norm"],
               "widened_lambda_min": pw["lambda_min"], "zero_grad_norm": pz["grad_norm"],
               "zero_lambda_min": pz["lambda_min"], "final_widened_rel_loss": c_wide[-1] / var,
               "final_control_rel_loss": c_ctrl[-1] / var, "escaped": bool(escaped)}
        rows.append(row)
        curves.append((c_wide, c_ctrl))
        print(json.dumps({k: (round(v, 12) if isinstance(v, float) else v) for k, v in row.items()}),
              flush=True)
    out = Path(args.out)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    steps = range(1, args.steps + 1)
    for i, (cw, cc) in enumerate(curves):
        ax.plot(steps, [v / var for v in cc], color="tab:blue", lw=1, alpha=0.7,
                label=f"width {r}, continued (control)" if i == 0 else None)
        ax.plot(steps, [v / var for v in cw], color="tab:red", lw=1, alpha=0.7,
                label=f"width {r + 1}, one unit duplicated" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Adam step after widening")
    ax.set_ylabel("training loss / target variance")
    n_min = sum(rw["is_minimum"] for rw in rows)
    n_esc = sum(rw["escaped"] for rw in rows)
    n_bad = sum(rw["bad_minimum"] for rw in rows)
    lmin = max((rw["widened_lambda_min"] for rw in rows if rw["bad_minimum"]), default=float("nan"))
    ax.set_title(f"{args.activation} teacher r*={r_star}, student width {r}: {n_bad}/{len(rows)} seeds "
                 f"at a bad minimum,\n{n_esc}/{n_bad} escape after one split (lambda_min <= {lmin:.1e})",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, out / "escape_widen.png", dpi=90)
    summary = {"r_star": r_star, "width": r, "activation": args.activation,
               "teacher_scale": args.teacher_scale, "n_train": args.n_train, "seeds": args.seeds,
               "minima": n_min, "bad_minima": n_bad, "escaped": n_esc,
               "steps": args.steps, "nudge": args.nudge,
               "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    atomic_write_json(summary, out / "escape_widen.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))


if __name__ == "__main__":
    main()

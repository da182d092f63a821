"""Benchmark: top-5 Hessian eigenvalues by Lanczos (overparam_lit.curvature) against PyHessian.

Same model, same probe batch, same process. Reports, for each method, the HVP count and wall
time of the top-5 eigenvalues of the quickstart MNIST-1D MLP (2 x 256 units), and each
method's relative error against the exact spectrum of a small MLP (dense Hessian); also the
time of one HVP over the time of one gradient. The last line is JSON with
``speedup_vs_pyhessian`` (PyHessian wall time / ours, at equal or better accuracy) and
``hvp_over_grad``.

It also times one probe of ``S`` stacked members (one block-diagonal product of the summed member
losses per Lanczos / SLQ step) against ``S`` sequential single-model probes of the same members'
weights, same probe set (500 samples) and budget (k = 5, 100 Lanczos steps at tol 1e-4, one SLQ
run of 40 steps, float32), in this process, interleaved (stacked, sequential, sequential,
stacked, ... with ``--stacked-pairs`` above 1): ``stacked_over_sequential_S`` is the median stacked
time over the median sequential time, for S = 4 and 16 MNIST-1D 2 x 256 MLPs at init;
``stacked_over_sequential`` is the worse of the two; the raw seconds are beside them.

    python scripts/bench_hessian.py [--width 256] [--probe 1000] [--repeats 3] [--stacked-only]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time

import numpy as np
import torch
from torch import nn

from overparam_lit.curvature import HessianOperator, lanczos
from overparam_lit.curvature.probe import ProbeOptions, probe_loss, probe_spectra
from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP

CE = nn.functional.cross_entropy
# the module, not the class of the same name that pyhessian/__init__.py re-exports
ph = importlib.import_module("pyhessian.hessian")


def pyhessian_top(net: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple:
    """PyHessian 0.1's deflated power iteration (defaults maxIter=100, tol=1e-3)."""
    count = {"hvps": 0}
    original = ph.hessian_vector_product

    def counted(*args, **kwargs):
        count["hvps"] += 1
        return original(*args, **kwargs)

    ph.hessian_vector_product = counted
    try:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        h = ph.hessian(net, CE, data=(x, y), cuda=False)
        vals, _ = h.eigenvalues(top_n=k)
        seconds = time.perf_counter() - t0
    finally:
        ph.hessian_vector_product = original
        net.zero_grad(set_to_none=True)  # PyHessian leaves gradients behind
    return np.sort(np.array(vals))[::-1], count["hvps"], seconds


def ours_top(net: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, tol: float) -> tuple:
    t0 = time.perf_counter()
    op = HessianOperator(net, CE, x, y)
    res = lanczos(op, op.dim, k=k, max_iters=200, tol=tol, which="top",
                  generator=torch.Generator().manual_seed(0))
    return res.top, res.num_matvecs, time.perf_counter() - t0


def exact_top(net: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> np.ndarray:
    op = HessianOperator(net, CE, x.double(), y, dtype=torch.float64)
    eye = torch.eye(op.dim, dtype=torch.float64)
    H = torch.stack([op.matvec(e) for e in eye])
    return np.linalg.eigvalsh(((H + H.T) / 2).numpy())[::-1][:k]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stacked_over_sequential(members: int, x: torch.Tensor, y: torch.Tensor, opts: ProbeOptions,
                            width: int, pairs: int) -> dict:
    """Seconds of one probe of ``members`` stacked MLPs and of ``members`` single-model probes of
    the same weights, ``pairs`` times each, interleaved; also the largest relative difference of
    their top-k eigenvalues."""
    stack = MLP(input_shape=tuple(x.shape[1:]), width=width, depth=2, seeds=list(range(members)))
    singles = [n.eval() for n in stack.member_networks()]
    net, loss = stack.net.eval(), probe_loss(stack)

    def stacked() -> list:
        return probe_spectra(net, loss, x, y, [n for n, _ in net.named_parameters()], {}, members, opts)

    def sequential() -> list:
        return [probe_spectra(n, CE, x, y, [k for k, _ in n.named_parameters()], {}, None, opts)[0]
                for n in singles]

    times: dict[str, list[float]] = {"stacked": [], "sequential": []}
    out: dict[str, list] = {}
    for i in range(2 * pairs):
        name = ("stacked", "sequential")[(i + i // 2) % 2]  # ABBA...: drift cancels over two pairs
        t0 = time.perf_counter()
        out[name] = stacked() if name == "stacked" else sequential()
        times[name].append(time.perf_counter() - t0)
        print(f"S = {members}: {name} probe {times[name][-1]:.2f} s", flush=True)
    a, b = out["stacked"], out["sequential"]
    top = max(float(np.max(np.abs(p.top - q.top) / np.abs(q.top))) for p, q in zip(a, b, strict=True))
    t_st, t_seq = statistics.median(times["stacked"]), statistics.median(times["sequential"])
    return {"ratio": round(t_st / t_seq, 3), "seconds_stacked": [round(t, 2) for t in times["stacked"]],
            "seconds_sequential": [round(t, 2) for t in times["sequential"]],
            "hvps_per_member": [int(s.num_hvps) for s in b], "top_rel_diff": top}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--probe", type=int, default=1000)
    ap.add_argument("--small-width", type=int, default=12)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stacked-members", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--stacked-pairs", type=int, default=1, help="stacked and sequential timings each")
    ap.add_argument("--stacked-iters", type=int, default=100, help="Lanczos budget (tol 1e-4)")
    ap.add_argument("--stacked-slq", type=int, nargs=2, default=[1, 40], metavar=("RUNS", "ITERS"))
    ap.add_argument("--stacked-probe", type=int, default=500,
                    help="probe set of the stacked timing (fewer samples: cheaper products, so the "
                         "basis work weighs more)")
    ap.add_argument("--stacked-only", action="store_true", help="only the stacked-probe timing")
    args = ap.parse_args()
    dm = MNIST1D()
    x, y, _ = dm.probe_set(args.probe, "train", 0)

    xs, ys, _ = dm.probe_set(args.stacked_probe, "train", 0)
    opts = ProbeOptions(k=args.k, lanczos_iters=args.stacked_iters, tol=1e-4, slq_runs=args.stacked_slq[0],
                        slq_iters=args.stacked_slq[1], probe_size=args.stacked_probe)
    stacked = {}
    for members in args.stacked_members:
        stacked[members] = stacked_over_sequential(members, xs, ys, opts, args.width, args.stacked_pairs)
        print(f"S = {members}: stacked / sequential {stacked[members]['ratio']}", flush=True)
    result_stacked = {f"stacked_over_sequential_{m}": r["ratio"] for m, r in stacked.items()}
    result_stacked.update(
        stacked_over_sequential=max(r["ratio"] for r in stacked.values()),
        stacked_seconds={str(m): {k: r[k] for k in ("seconds_stacked", "seconds_sequential")}
                         for m, r in stacked.items()},
        stacked_hvps_per_member={str(m): r["hvps_per_member"] for m, r in stacked.items()},
        stacked_top_rel_diff=max(r["top_rel_diff"] for r in stacked.values()),
        stacked_setup={"model": f"MNIST-1D MLP 2 x {args.width}", "probe_size": args.stacked_probe,
                       "lanczos_iters": opts.lanczos_iters, "k": opts.k, "tol": opts.tol,
                       "slq_runs": opts.slq_runs, "slq_iters": opts.slq_iters,
                       "dtype": "float32", "threads": torch.get_num_threads()},
    )
    if args.stacked_only:
        print(json.dumps(result_stacked))
        return

    # 1) accuracy on a small model with an exact spectrum
    torch.manual_seed(0)
    small = MLP(width=args.small_width, depth=1, activation="relu").net.eval()
    xs, ys = x[:200], y[:200]
    exact = exact_top(small.double(), xs, ys, args.k)
    small.float()
    ph_small, _, _ = pyhessian_top(small, xs, ys, args.k)
    our_small, _, _ = ours_top(small, xs, ys, args.k, args.tol)
    err_ph = float(np.max(np.abs(ph_small - exact) / np.abs(exact)))
    err_ours = float(np.max(np.abs(our_small - exact) / np.abs(exact)))

    # 2) speed on the quickstart model (trained briefly so the spectrum is not that of init)
    torch.manual_seed(0)
    big = MLP(width=args.width, depth=2, activation="relu").net
    opt = torch.optim.Adam(big.parameters(), lr=1e-3)
    xt, yt, _ = dm.probe_set(None, "train")
    for i in range(200):
        b = slice((i * 100) % 4000, (i * 100) % 4000 + 100)
        opt.zero_grad()
        CE(big(xt[b]), yt[b]).backward()
        opt.step()
    big.zero_grad(set_to_none=True)
    big.eval()
    ph_vals, ph_hvps, ph_s = pyhessian_top(big, x, y, args.k)
    our_vals, our_hvps, our_s = ours_top(big, x, y, args.k, args.tol)
    agree = float(np.max(np.abs(ph_vals - our_vals) / np.abs(our_vals)))

    # 3) one HVP over one gradient (same probe batch, plain autograd gradient)
    op = HessianOperator(big, CE, x, y)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1))
    params = [p for p in big.parameters()]

    def one_grad() -> None:
        torch.autograd.grad(CE(big(x), y), params)

    t_grad = median_time(one_grad, args.repeats * 5)
    t_hvp = median_time(lambda: op.matvec(v), args.repeats * 5)
    op_db = HessianOperator(big, CE, x, y, method="jvp", cache=False)
    t_hvp_db = median_time(lambda: op_db.matvec(v), args.repeats * 5)
    op_lin = HessianOperator(big, CE, x, y, method="jvp", cache=True)
    t_hvp_lin = median_time(lambda: op_lin.matvec(v), args.repeats * 5)

    n_params = sum(p.numel() for p in big.parameters())
    print(f"model: MNIST-1D MLP 2 x {args.width} ({n_params} parameters), probe batch {args.probe}")
    print(f"{'method':<22}{'HVPs':>6}{'seconds':>10}   top-{args.k}")
    print(f"{'pyhessian 0.1':<22}{ph_hvps:>6}{ph_s:>10.3f}   {np.array2string(ph_vals, precision=4)}")
    print(f"{'lanczos (ours)':<22}{our_hvps:>6}{our_s:>10.3f}   "
          f"{np.array2string(our_vals, precision=4)}")
    print(f"max relative disagreement of the top-{args.k}: {agree:.2e}")
    print(f"small MLP (width {args.small_width}, exact dense Hessian): max relative error of "
          f"top-{args.k}: pyhessian {err_ph:.2e}, ours {err_ours:.2e}")
    print(f"one gradient {t_grad * 1e3:.2f} ms; one HVP: {t_hvp * 1e3:.2f} ms (default: cached "
          f"double backward), {t_hvp_db * 1e3:.2f} ms (torch.func jvp of grad), "
          f"{t_hvp_lin * 1e3:.2f} ms (torch.func linearize, after its one-off trace)")
    result = {
        "speedup_vs_pyhessian": round(ph_s / our_s, 3),
        "hvp_over_grad": round(t_hvp / t_grad, 3),
        "hvp_over_grad_jvp": round(t_hvp_db / t_grad, 3),
        "hvp_over_grad_linearize": round(t_hvp_lin / t_grad, 3),
        "hvps_ours": int(our_hvps), "hvps_pyhessian": int(ph_hvps),
        "seconds_ours": round(our_s, 4), "seconds_pyhessian": round(ph_s, 4),
        "rel_error_ours": err_ours, "rel_error_pyhessian": err_ph,
        "equal_or_better_accuracy": bool(err_ours <= err_ph),
        "num_params": n_params, "probe_size": args.probe,
        **result_stacked,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

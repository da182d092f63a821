"""Every GPU-specific check in one run: fits, members, probes, snapshots, IMP and speed on CUDA.

Run it once on a machine with one CUDA GPU (its sizes are chosen to finish in under 8 minutes on
one H100), or at tiny sizes on the CPU, which checks the script's logic (``tests/cli/test_gpu_check.py``
runs that):

    python scripts/gpu_check.py                         # CUDA, full sizes
    python scripts/gpu_check.py --device cpu --quick    # tiny sizes on the CPU, about 15 s on 2 cores
    python scripts/gpu_check.py --checks members,hessian  # a subset (names below)

Every fit goes through ``overparam-lit fit`` (the CLI class in this process, a fit's console output
sent to stderr); data are synthetic (MNIST-1D is generated; CIFAR-10 and MNIST files of random
pixels are written in their real formats to a temporary folder, so the CIFAR and LeNet presets run
as they would on the real files). The checks:

- ``families``: MLP (quickstart), CNN and ResNet18 (the CIFAR-10 presets), LeNet-300-100 (its MNIST
  preset) fit a few steps in float32 and in bf16-mixed: finite losses, weights moved, float32 master
  weights, and bf16 weights that differ from the float32 ones (autocast was on);
- ``members``: MLP (Adam) and CNN (BatchNorm, SGD with momentum, CIFAR-shaped) seed members equal
  their single fits to ``tol(float32, batch x positions)`` of the parameter scale (tests/tolerances.py;
  cuDNN's TF32 convolutions are turned off for this check, and on CUDA the CNN error with them on,
  PyTorch's default, is reported as ``cnn_rel_error_tf32``);
- ``hessian``: the HessianProbe callback's spectrum of a fit equals a CPU probe of the same weights
  (``HessianOperator`` + ``hessian_spectrum``, same options and start vectors) to 1e-4: top-k,
  trace and probe loss relative, bottom-k relative to ``lambda_max`` (a near-zero eigenvalue has no
  relative precision of its own);
- ``regions``: a DecisionRegions snapshot of a fit equals ``label_maps`` of the same weights on the
  CPU: margins within float32 rounding of the logits, labels equal wherever the margin exceeds it;
- ``imp``: 2 levels of IMP: per-level kept counts, the magnitude rule against the previous level's
  final weights, densities, and pruned weights exactly zero;
- ``speedup16``: 16 MNIST-1D MLP members in one fit against a plain PyTorch loop training one of them,
  per model, as ``scripts/bench_gpu_members.py`` measures it (passes at > 1 in full mode);
- ``cnn_widths``: one CIFAR-shaped CNN fit of widths [1, 2, 4, 8, 16] x 4 seeds against the same 20
  single fits one after another (passes at > 1 in full mode).

Speed thresholds apply in full mode only: ``--quick`` fits are too short to time.

Output: a line per check on stdout, then one JSON line last::

    {"device": ..., "quick": false, "torch": ..., "passed": true, "failed": [], "seconds": 212.3,
     "checks": {"families": {"passed": true, "seconds": 21.0, ...numbers...}, ...}}

A check that raises is recorded with ``"passed": false`` and its ``"error"`` (traceback on stderr);
the others still run. Exit code 0 when every check passed, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import pickle
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from tolerances import tol  # noqa: E402  (the tolerance rules of the test suite)

from overparam_lit.cli import OverparamCLI, quiet_console  # noqa: E402

CHECKS = ("families", "members", "hessian", "regions", "imp", "speedup16", "cnn_widths")
WIDTHS, SEEDS = [1, 2, 4, 8, 16], [0, 1, 2, 3]  # as scripts/bench_gpu_members.py


@dataclass
class Ctx:
    """Where and how big: the device, quick sizes, the scratch folder and the synthetic data roots."""

    device: str
    quick: bool
    root: Path
    cifar_small: Path
    cifar_large: Path
    mnist: Path

    def q(self, quick: Any, full: Any) -> Any:
        """``quick`` in quick mode, else ``full``."""
        return quick if self.quick else full


class TimedCLI(OverparamCLI):
    """``overparam-lit fit`` as the console script runs it, with ``Trainer.fit``'s wall seconds
    (``fit_s``, the device synchronised at both ends)."""

    fit_s = float("nan")
    initial: dict[str, torch.Tensor]

    def before_fit(self) -> None:
        super().before_fit()
        self.initial = params(self.model)
        _sync()
        self._t0 = time.perf_counter()

    def after_fit(self) -> None:
        _sync()
        self.fit_s = time.perf_counter() - self._t0
        super().after_fit()


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def fit(ctx: Ctx, name: str, *args: str, seed: int = 0, test: bool = False, ckpt: bool = False) -> TimedCLI:
    """One ``overparam-lit fit <args>`` on ``ctx.device`` into ``<scratch>/<name>``, quiet and offline."""
    argv = ["fit", *args, "--seed_everything", str(seed),
            "--trainer.accelerator", "gpu" if ctx.device == "cuda" else "cpu", "--trainer.devices", "1",
            "--trainer.default_root_dir", str(ctx.root / name), "--wandb.mode", "disabled",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.enable_checkpointing", str(ckpt).lower(), "--test_after_fit", str(test).lower()]
    with contextlib.redirect_stdout(sys.stderr):
        return TimedCLI(args=argv)


def config(name: str) -> list[str]:
    """``-c configs/<name>``."""
    return ["-c", str(REPO / "configs" / name)]


def callback(name: str, **options: Any) -> list[str]:
    """``-c callbacks/<name>`` and ``--trainer.callbacks.KEY VALUE`` for each option."""
    out = ["-c", str(REPO / "callbacks" / name)]
    for key, value in options.items():
        out += [f"--trainer.callbacks.{key}", json.dumps(value) if not isinstance(value, str) else value]
    return out


# ---- synthetic data in the real on-disk formats ------------------------------------------------
def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10's python pickles (5 training batches, test batch, meta) of random pixels and labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per = n_train // 5
    files = [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", n_test)]
    for fname, n in files:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist(), "batch_label": fname}
        with open(folder / fname, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh, protocol=2)
    return root


def write_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """MNIST's uncompressed IDX files of random pixels and labels, in torchvision's layout."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                            ("labels-idx1", rng.integers(0, 10, n))):
            with open(raw / f"{prefix}-{kind}-ubyte", "wb") as fh:
                fh.write(struct.pack(">I", 2051 if array.ndim == 3 else 2049))
                fh.write(struct.pack(f">{array.ndim}I", *array.shape))
                fh.write(array.astype(np.uint8).tobytes())
    return root


# ---- helpers -----------------------------------------------------------------------------------
def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A float32 CPU copy of every parameter."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}


def last_metric(cli: TimedCLI, key: str) -> float:
    """The last value of ``key`` in the fit's ``metrics.csv`` (NaN when never logged)."""
    values = [r[key] for r in cli.run_folder.read_metrics() if r.get(key)]
    return float(values[-1]) if values else float("nan")


def member_error(stack: torch.nn.Module, single: torch.nn.Module, i: int) -> tuple[float, float]:
    """Largest difference between member ``i`` of ``stack`` and ``single`` over parameters and
    buffers (cropped to the single model's shapes), and the single model's parameter scale."""
    mine = dict(single.named_parameters()) | dict(single.named_buffers())
    err, scale = 0.0, 0.0
    for name, t in list(stack.named_parameters()) + list(stack.named_buffers()):
        if name in mine and name.startswith("net."):
            own = mine[name].detach().cpu().double()
            crop = t.detach().cpu()[i][tuple(slice(0, s) for s in own.shape)].double()
            err = max(err, float((crop - own).abs().max()))
            if t.is_floating_point():
                scale = max(scale, float(own.abs().max()))
    return err, scale


# ---- the checks --------------------------------------------------------------------------------
def check_families(ctx: Ctx) -> dict[str, Any]:
    """Each family's preset, a few steps in float32 and in bf16-mixed (with the test split)."""
    steps = ctx.q(2, 5)
    cifar = ["--data.root", str(ctx.cifar_small), "--data.batch_size", str(ctx.q(8, 128))]
    val = ["--data.val_size", str(ctx.q(10, 100))]
    cases = {
        "mlp": config("quickstart.yaml") + ["--model.width", str(ctx.q(16, 256))]
        + (["--data.train_subset", "200"] if ctx.quick else []),
        "cnn": config("cifar10_cnn.yaml") + cifar + ["--model.width", str(ctx.q(2, 64))],
        "resnet18": config("cifar10_resnet18.yaml") + cifar + ["--model.width", str(ctx.q(2, 64))],
        "lenet": config("mnist_lenet_300_100.yaml") + ["--data.root", str(ctx.mnist), "--model.width",
                                                       str(ctx.q(6, 300)), *val],
    }
    out: dict[str, Any] = {"steps": steps}
    ok = True
    for fam, args in cases.items():
        weights = {}
        for prec in ("32-true", "bf16-mixed"):
            tag = f"{fam}_{prec.split('-')[0]}"
            cli = fit(ctx, f"families/{tag}", *args, "--trainer.max_steps", str(steps),
                      "--trainer.precision", prec, test=True, ckpt=True)
            weights[prec] = params(cli.model)
            moved = any(not torch.equal(cli.initial[n], w) for n, w in weights[prec].items())
            loss, test_loss = last_metric(cli, "train/loss"), last_metric(cli, "test/loss")
            ran = cli.trainer.strategy.root_device.type == ctx.device and cli.trainer.global_step == steps
            fp32 = all(p.dtype == torch.float32 for p in cli.model.parameters())
            good = ran and fp32 and moved and math.isfinite(loss) and math.isfinite(test_loss) \
                and cli.run_folder.last_ckpt.is_file()
            out[tag] = {"train_loss": loss, "test_loss": test_loss, "fit_s": round(cli.fit_s, 3),
                        "num_params": int(cli.model.num_params), "ok": good}
            ok &= good
        a, b = weights["32-true"], weights["bf16-mixed"]
        diff = max(float((a[n] - b[n]).abs().max()) for n in a)
        scale = max(float(a[n].abs().max()) for n in a)
        out[f"{fam}_bf16_vs_fp32_rel"] = diff / scale
        ok &= diff > 0  # autocast changed the arithmetic
    out["passed"] = ok
    return out


def _members_case(ctx: Ctx, name: str, args: list[str], seeds: list[int], singles: list[int],
                  n_terms: int, steps: int) -> dict[str, Any]:
    """A stack of ``seeds`` and the single fits of ``singles``: the largest relative difference."""
    stack = fit(ctx, f"members/{name}_stack", *args, "--model.seeds", json.dumps(seeds),
                "--trainer.max_steps", str(steps), seed=seeds[0]).model
    errors = []
    for s in singles:
        single = fit(ctx, f"members/{name}_single{s}", *args, "--trainer.max_steps", str(steps), seed=s).model
        err, scale = member_error(stack, single, seeds.index(s))
        errors.append(err / scale)
    rel = tol(torch.float32, n_terms)
    return {"rel_error": max(errors), "rel_tol": rel, "n_terms": n_terms, "passed": max(errors) <= rel}


def check_members(ctx: Ctx) -> dict[str, Any]:
    """MLP and BatchNorm CNN seed members against their own single fits."""
    seeds, singles, steps = ctx.q([0, 1], [0, 1, 2, 3]), ctx.q([1], [1, 3]), ctx.q(4, 8)
    batch = ctx.q(20, 50)
    mlp_args = config("quickstart.yaml") + ["--model.width", str(ctx.q(16, 64)), "--data.train_subset",
                                            str(4 * batch), "--data.batch_size", str(batch)]
    cnn_args = config("cifar10_cnn.yaml") + [
        "--data.root", str(ctx.cifar_small), "--data.train_subset", str(4 * batch), "--data.batch_size",
        str(batch), "--model.width", str(ctx.q(2, 4)), "--model.optimizer", "SGD",
        "--model.optimizer.lr", "0.01", "--model.optimizer.momentum", "0.9"]
    # The largest sums: a weight gradient over batch x input positions (as in
    # tests/unit/models/test_members.py). SGD (not Adam: see that file's float64 case) at lr 0.01:
    # on the CPU the CNN member stays within 1.2e-7 of its single fit over the 8 steps; at lr 0.05
    # one step amplified the float32 difference 500-fold (to 2.5e-3 after 8 steps; float64 stays at
    # 1e-16), which is the dynamics, not the stacking.
    mlp = _members_case(ctx, "mlp", mlp_args, seeds, singles, batch * 40, steps)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions, else TF32 (10-bit mantissa)
    try:
        cnn = _members_case(ctx, "cnn", cnn_args, seeds, singles, batch * 32 * 32, steps)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    out = {"mlp": mlp, "cnn": cnn, "cudnn_allow_tf32_default": tf32,
           "passed": mlp["passed"] and cnn["passed"]}
    if ctx.device == "cuda" and tf32:  # PyTorch's default: how far members drift with TF32 convolutions
        out["cnn_rel_error_tf32"] = _members_case(ctx, "cnn_tf32", cnn_args, seeds, singles[:1],
                                                  batch * 32 * 32, steps)["rel_error"]
    return out


def check_hessian(ctx: Ctx) -> dict[str, Any]:
    """The probe of the fit's last step against a CPU probe of the same weights."""
    from overparam_lit.callbacks.hessian import HessianProbe
    from overparam_lit.curvature import HessianOperator, hessian_spectrum

    steps = ctx.q(4, 40)
    probe = {"schedule": "steps", "every": steps, "probe_at_start": False, "probe_size": ctx.q(100, 500),
             "k": 3, "lanczos_iters": ctx.q(40, 100), "bottom_iters": ctx.q(40, 100), "tol": 1e-7,
             "slq_runs": 2, "slq_iters": 20, "save_figure": False, "progress_every": None}
    cli = fit(ctx, "hessian", *config("quickstart.yaml"), "--model.width", str(ctx.q(16, 256)),
              *(["--data.train_subset", "400"] if ctx.quick else []), "--trainer.max_steps", str(steps),
              *callback("hessian.yaml", **probe))
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, HessianProbe))
    saved = dict(np.load(cli.run_folder.hessian_probe(steps)))
    model = cli.model.cpu()
    x, y, _ = cli.datamodule.probe_set(cb.opts.probe_size, cb.opts.split, cb.opts.seed)
    t0 = time.perf_counter()
    net = model.net.eval()
    op = HessianOperator(net, model.loss, x.cpu(), y.cpu(), chunk_size=cb.opts.chunk_size, distributed=False)
    o = cb.opts
    cpu = hessian_spectrum(op.matvec, op.dim, k=o.k, lanczos_iters=o.lanczos_iters, tol=o.tol,
                           slq_runs=o.slq_runs, slq_iters=o.slq_iters, negative_eps=o.negative_eps,
                           seed=o.seed, bottom_iters=o.bottom_iters)
    with torch.no_grad():
        cpu_loss = float(model.loss(net(x.cpu()), y.cpu()))
    # On the CPU at these sizes, float32 against float64 differ by 4e-7 (top-3), 1e-8 of lambda_max
    # (bottom-3) and 8e-8 (trace): 1e-4 leaves over 200x for another device's float32 rounding.
    lam = abs(float(cpu.top[0]))
    top = float(np.max(np.abs(saved["top"] - cpu.top) / np.abs(cpu.top)))
    bottom = float(np.max(np.abs(saved["bottom"] - cpu.bottom))) / lam
    trace = abs(float(saved["trace"]) - cpu.trace) / abs(cpu.trace)
    loss = abs(float(saved["loss"]) - cpu_loss) / abs(cpu_loss)
    return {"lambda_max": float(saved["lambda_max"]), "dim": int(op.dim), "top_rel": top,
            "bottom_rel_to_lambda_max": bottom, "trace_rel": trace, "loss_rel": loss,
            "num_hvps": int(saved["num_hvps"]), "cpu_probe_s": round(time.perf_counter() - t0, 3),
            "passed": int(saved["dim"]) == op.dim and max(top, bottom, trace, loss) <= 1e-4}


def check_regions(ctx: Ctx) -> dict[str, Any]:
    """The snapshot after epoch 1 against ``label_maps`` of the same weights on the CPU."""
    from overparam_lit.regions import PlaneBank, label_maps, load_label_maps

    width = ctx.q(16, 256)
    cli = fit(ctx, "regions", *config("quickstart.yaml"), "--model.width", str(width),
              *(["--data.train_subset", "200"] if ctx.quick else []), "--trainer.max_epochs", "1",
              *callback("regions.yaml", num_planes=ctx.q(2, 8), resolution=ctx.q(16, 64), epochs=[1],
                        at_init=False, render_planes=0, log_images=False))
    folder = cli.run_folder
    bank = PlaneBank.load(folder.regions_bank)
    saved = load_label_maps(str(folder.regions_maps(1)))
    model = cli.model.cpu()
    cpu = label_maps(model, bank)
    # the logits' float32 rounding: sums of fan-in terms through every layer, at the logits' scale
    pts = torch.cat([bank.origin[p] + bank.grid_coords(p) @ bank.basis[p] for p in range(bank.num_planes)])
    with torch.no_grad():
        scale = float(model.net.eval()(pts.float().reshape(-1, *bank.input_shape)).abs().max())
    fan_ins = sum(m.in_features for m in model.net.modules() if isinstance(m, torch.nn.Linear))
    margin_tol = tol(torch.float32, fan_ins, scale)  # 6e-4 at full size; float32 vs float64 there: 3e-6
    margin_err = float(np.abs(saved.margin - cpu.margin).max())
    differ = saved.pred != cpu.pred
    unexplained = int((differ & (cpu.margin > margin_tol)).sum())
    return {"points": int(cpu.pred.size), "labels_differ": int(differ.sum()), "unexplained": unexplained,
            "margin_err": margin_err, "margin_tol": margin_tol, "logit_scale": scale,
            "passed": saved.pred.shape == cpu.pred.shape and unexplained == 0 and margin_err <= margin_tol}


def check_imp(ctx: Ctx) -> dict[str, Any]:
    """Two IMP levels (global 0.2, output layer 0.1) checked from the saved masks and weights."""
    fraction, out_fraction = 0.2, 0.1
    cli = fit(ctx, "imp", *config("quickstart.yaml"), "--model.width", str(ctx.q(16, 256)),
              *(["--data.train_subset", "200"] if ctx.quick else []), "--trainer.max_epochs", "1",
              *callback("imp.yaml", levels=2, fraction=fraction, output_fraction=out_fraction,
                        epochs_per_level=1))
    folder = cli.run_folder
    summary = folder.read_json(folder.imp_summary)
    model = cli.model.cpu()
    names = [n for n, _ in model.named_parameters()]
    load = lambda p: torch.load(p, weights_only=True, map_location="cpu")  # noqa: E731
    masks = [load(folder.imp_mask(level)) for level in range(3)]
    out_name = [n for n in names if n in masks[0]][-1]
    hidden = [n for n in names if n in masks[0] and n != out_name]
    n_hidden, n_out = sum(masks[0][n].numel() for n in hidden), masks[0][out_name].numel()
    total = n_hidden + n_out
    ok = [lv["level"] for lv in summary["levels"]] == [0, 1, 2]
    kept, rule = [], True
    for level in (1, 2):
        m, prev, final_prev = masks[level], masks[level - 1], load(folder.imp_final(level - 1))
        k_hidden, k_out = sum(int(m[n].sum()) for n in hidden), int(m[out_name].sum())
        kept.append([k_hidden, k_out])
        # within one weight of the geometric targets (rounding of the per-level count)
        ok &= abs(k_hidden - round(n_hidden * (1 - fraction) ** level)) <= 1
        ok &= abs(k_out - round(n_out * (1 - out_fraction) ** level)) <= 1
        ok &= abs(summary["levels"][level]["density"] - (k_hidden + k_out) / total) <= 1e-12
        for pool in (hidden, [out_name]):  # survivors: the largest |w| at the end of the last level
            a = torch.cat([final_prev[n].abs().flatten() for n in pool])
            alive = torch.cat([prev[n].flatten() for n in pool])
            got = torch.cat([m[n].flatten() for n in pool])
            rule &= not bool((got & ~alive).any()) and float(a[got].min()) >= float(a[alive & ~got].max())
    p = dict(model.named_parameters())
    zero = all(bool((p[n].detach()[~mk] == 0).all()) for n, mk in masks[2].items())
    return {"densities": [lv["density"] for lv in summary["levels"]], "kept_hidden_output": kept,
            "magnitude_rule": rule, "pruned_weights_zero": zero, "fit_s": round(cli.fit_s, 3),
            "passed": ok and rule and zero}


def plain_mlp(ctx: Ctx, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> float:
    """A plain PyTorch loop of Adam steps on one MNIST-1D MLP (2 x 100) on ``ctx.device``; seconds."""
    from overparam_lit.models import MLP

    net = MLP(width=100, depth=2, input_shape=(1, 40), num_classes=10).net.to(ctx.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = x.to(ctx.device), y.to(ctx.device)
    perm = torch.randperm(x.shape[0], device=ctx.device)
    per_epoch = x.shape[0] // batch
    _sync()
    start = time.perf_counter()
    for s in range(steps):
        idx = perm[(s % per_epoch) * batch:(s % per_epoch + 1) * batch]
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync()
    return time.perf_counter() - start


def check_speedup16(ctx: Ctx) -> dict[str, Any]:
    """16 MLP members in one fit against 16 times a plain loop of one (best of two)."""
    members, epochs, batch = ctx.q(4, 16), ctx.q(1, 3), 100
    args = ["--model", "MLP", "--model.width", "100", "--model.depth", "2", "--model.optimizer", "Adam",
            "--model.optimizer.lr", "0.01", "--data", "MNIST1D", "--data.batch_size", str(batch),
            "--model.seeds", str(members), *(["--data.train_subset", "400"] if ctx.quick else [])]
    warm = fit(ctx, "speedup16/warm", *args, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0")
    x, y, _ = warm.datamodule.splits["train"]
    steps = epochs * (x.shape[0] // batch)
    plain_mlp(ctx, x, y, min(steps, 50), batch)  # warm-up
    t_plain = min(plain_mlp(ctx, x, y, steps, batch) for _ in range(2))
    cli = fit(ctx, "speedup16/fit", *args, "--trainer.max_epochs", str(epochs),
              "--trainer.limit_val_batches", "0")
    speedup = members * t_plain / cli.fit_s
    return {"members": members, "steps": steps, "plain_one_model_s": round(t_plain, 3),
            "stacked_fit_s": round(cli.fit_s, 3), "per_model_speedup": round(speedup, 3),
            "passed": bool(cli.trainer.global_step == steps and (ctx.quick or speedup > 1))}


def check_cnn_widths(ctx: Ctx) -> dict[str, Any]:
    """One CNN fit of widths x seeds on CIFAR-shaped data against its single fits one by one."""
    widths, seeds, epochs = ctx.q([1, 2], [0]), ctx.q([0], SEEDS), ctx.q(1, 2)
    if not ctx.quick:
        widths = WIDTHS
    args = config("cifar10_cnn.yaml") + ["--data.root", str(ctx.cifar_large), "--data.batch_size",
                                         str(ctx.q(20, 128)), "--trainer.max_epochs", str(epochs)]
    packed = fit(ctx, "cnn_widths/packed", *args, "--model.widths", json.dumps(widths),
                 "--model.seeds", json.dumps(seeds))
    rows = packed.run_folder.read_members()
    last = {(int(r["width"]), int(r["seed"])): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    complete = set(last) == {(w, s) for w in widths for s in seeds} and all(map(math.isfinite, last.values()))
    single = 0.0
    for w in widths:
        for s in seeds:
            single += fit(ctx, f"cnn_widths/w{w}_s{s}", *args, "--model.width", str(w), seed=s).fit_s
    speedup = single / packed.fit_s
    return {"widths": widths, "seeds": seeds, "epochs": epochs, "packed_fit_s": round(packed.fit_s, 3),
            "sequential_fit_s": round(single, 3), "speedup": round(speedup, 3), "members_complete": complete,
            "passed": complete and (ctx.quick or speedup > 1)}


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "families": check_families, "members": check_members, "hessian": check_hessian,
    "regions": check_regions, "imp": check_imp, "speedup16": check_speedup16, "cnn_widths": check_cnn_widths,
}


def run_check(name: str, ctx: Ctx) -> dict[str, Any]:
    """One check; an exception (or a refused fit) fails it and is kept as ``error``."""
    t0 = time.perf_counter()
    try:
        result = RUNNERS[name](ctx)
    except (Exception, SystemExit) as err:  # a refused CLI argument exits
        traceback.print_exc()
        result = {"passed": False, "error": f"{type(err).__name__}: {err}"[:500]}
    result["passed"] = bool(result["passed"])
    result["seconds"] = round(time.perf_counter() - t0, 2)
    gc.collect()
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the logic, not the speed")
    p.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = p.parse_args(argv)
    names = [c for c in args.checks.split(",") if c]
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA GPU: run on a GPU machine, or pass "
                "--device cpu --quick")
    if argv is None:
        sys.argv[1:] = []  # each fit's arguments go to the CLI class, which would also see these
    quiet_console()
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        ctx = Ctx(args.device, args.quick, root / "runs",
                  write_cifar10(root / "cifar_small", *((100, 20) if args.quick else (1280, 256))),
                  write_cifar10(root / "cifar_large", *((40, 20) if args.quick else (10_000, 1000)), seed=1),
                  write_mnist(root / "mnist", *((60, 20) if args.quick else (2000, 500))))
        for name in names:
            results[name] = run_check(name, ctx)
            r = results[name]
            print(f"{name}: {'pass' if r['passed'] else 'FAIL'} ({r['seconds']:.1f} s)"
                  + (f" {r['error']}" if "error" in r else ""), flush=True)
    failed = [n for n, r in results.items() if not r["passed"]]
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(json.dumps({"device": device, "quick": args.quick, "torch": torch.__version__,
                      "passed": not failed, "failed": failed, "seconds": round(time.perf_counter() - t0, 2),
                      "checks": results}, default=float), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Members: what stacking many small models into one fit buys, against plain loops and single fits.

All runs in one process on one CPU thread, each timed over ``Trainer.fit`` (the framework's fits
are built by the CLI exactly as ``overparam-lit fit`` builds them: data module, CSV logger,
epoch metrics, members.csv; W&B, validation and checkpointing off) or over the whole plain loop.
Best of ``--repeats``, interleaved so background load hits every side alike.

- ``per_model_speedup``: samples per second per model of a 16-member MNIST-1D MLP (width 100,
  depth 2, batch 100, Adam) fit, divided by a plain PyTorch loop training one such model for the
  same steps (goal >= 2 on a 2-core CPU; ``stacked_plain_speedup`` is a plain loop over the same
  stack, the ceiling of what stacking gives);
- ``teacher_student_speedup``: the same for 32 width-8 teacher-student students (2-D inputs,
  r* = 4 teacher, batch 512; goal >= 10);
- ``widths_speedup``: one fit of widths [8, 16, 32, 48, 64, 128, 256] against the same seven
  single fits one after another (> 1 means packing the widths pays on this machine);
- ``max_member_error``: the largest parameter difference between a member and its own single fit
  after a few float32 steps (MLP; CNN with BatchNorm and SGD).

    python scripts/bench_members.py [--epochs 20] [--repeats 3]

Fits are timed whole (start-up included), over the lengths of short real studies: ``--epochs``
MNIST-1D epochs (40 steps each) and four times as many teacher-student epochs (20 steps each).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from overparam_lit.cli import OverparamCLI
from overparam_lit.data import MNIST1D, TeacherStudent
from overparam_lit.models import CNN, MLP
from overparam_lit.models.stack import StackedNet, build_members, member_grid

REPO = Path(__file__).resolve().parents[1]
WIDTHS = [8, 16, 32, 48, 64, 128, 256]
TS = ["--data", "TeacherStudent", "--data.input_dim", "2", "--data.teacher_width", "4",
      "--data.n_train", "10000", "--data.n_test", "1000", "--data.batch_size", "512"]
MNIST = ["--data", "MNIST1D", "--data.batch_size", "100"]


def cli_fit(root: str, data: list[str], model: list[str], epochs: int, lr: float) -> float:
    """One ``overparam-lit fit`` built by the CLI; the wall seconds of ``trainer.fit``."""
    cli = OverparamCLI(run=False, args=[
        "--model", "MLP", *model, *data, "--seed_everything", "0", "--trainer.max_epochs", str(epochs),
        "--model.optimizer", "Adam", "--model.optimizer.lr", str(lr),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_model_summary", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", root, "--wandb.mode", "disabled",
    ])
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    return time.perf_counter() - start


def plain_loop(x: torch.Tensor, y: torch.Tensor, net: torch.nn.Module, steps: int, batch: int, lr: float,
               members: int = 0) -> float:
    """A minimal loop of Adam steps on ``net`` (a stack of ``members`` when > 0); wall seconds."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    regression = y.dtype != torch.long
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=gen)
    per_epoch = x.shape[0] // batch
    start = time.perf_counter()
    for step in range(steps):
        i = step % per_epoch
        idx = perm[i * batch:(i + 1) * batch]
        out = net(x[idx])
        if regression:
            target = y[idx].reshape(out.shape[-2:])
            loss = (out - target).pow(2).mean() * max(members, 1)
        elif members:
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y[idx].repeat(members))
            loss = loss * members
        else:
            loss = torch.nn.functional.cross_entropy(out, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def net_of(width: int, depth: int, input_shape: tuple[int, ...], out: int) -> torch.nn.Module:
    task = "classification" if out > 1 else "regression"
    return MLP(width=width, depth=depth, input_shape=input_shape, num_classes=out, task=task).net


def stack_of(width: int, depth: int, members: int, input_shape: tuple[int, ...], out: int) -> torch.nn.Module:
    def build(w: int) -> torch.nn.Module:
        return net_of(w, depth, input_shape, out)

    grid = member_grid(range(members), [width])
    return StackedNet(build_members(build, grid), build(width))


def speedup(root: str, data: list[str], x: torch.Tensor, y: torch.Tensor, width: int, depth: int,
            members: int, batch: int, epochs: int, lr: float, repeats: int, out: int) -> dict[str, float]:
    steps = epochs * (x.shape[0] // batch)
    shape = tuple(x.shape[1:])
    plain_loop(x, y, net_of(width, depth, shape, out), 20, batch, lr)  # warm-up of both loops
    plain_loop(x, y, stack_of(width, depth, members, shape, out), 20, batch, lr, members)
    best = {"plain": float("inf"), "stacked_plain": float("inf"), "fit": float("inf")}
    for r in range(repeats):
        torch.manual_seed(r)
        single = net_of(width, depth, shape, out)
        best["plain"] = min(best["plain"], plain_loop(x, y, single, steps, batch, lr))
        stack = stack_of(width, depth, members, shape, out)
        best["stacked_plain"] = min(best["stacked_plain"], plain_loop(x, y, stack, steps, batch, lr, members))
        best["fit"] = min(best["fit"], cli_fit(f"{root}/{r}", data, [
            "--model.width", str(width), "--model.depth", str(depth), "--model.seeds", str(members)],
            epochs, lr))
    return {"per_model": members * best["plain"] / best["fit"],
            "stacked_plain": members * best["plain"] / best["stacked_plain"],
            **{f"{k}_s": v for k, v in best.items()}}


def member_error(steps: int = 6) -> float:
    """Largest parameter difference between members and their single fits after a few steps."""
    worst = 0.0
    for cls, kw in ((MLP, {"width": 32}), (CNN, {"width": 3, "optimizer": lambda p: torch.optim.SGD(
            p, lr=0.05, momentum=0.9)})):
        fits = {}
        for seeds in ([0, 1, 2, 3], [1], [3]):
            L.seed_everything(seeds[0], verbose=False)
            model = cls(input_shape=(1, 40), seeds=seeds if len(seeds) > 1 else None, **kw)
            trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                                num_sanity_val_steps=0, default_root_dir=tempfile.mkdtemp())
            trainer.fit(model, MNIST1D(batch_size=50, train_subset=400))
            fits[tuple(seeds)] = model
        stack = fits[(0, 1, 2, 3)]
        for i in (1, 3):
            own = dict(fits[(i,)].named_parameters())
            for n, p in stack.named_parameters():
                worst = max(worst, float((p[i].detach() - own[n].detach()).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mn = MNIST1D(batch_size=100)
    mn.setup()
    xm, ym, _ = mn.splits["train"]
    ts = TeacherStudent(input_dim=2, teacher_width=4, n_train=10000, n_test=1000, batch_size=512)
    ts.setup()
    xt, yt, _ = ts.splits["train"]
    with tempfile.TemporaryDirectory() as root:
        cli_fit(f"{root}/warm", MNIST, ["--model.width", "100", "--model.seeds", "2"], 1, 1e-2)  # warm-up
        mnist = speedup(f"{root}/mnist", MNIST, xm, ym, 100, 2, 16, 100, args.epochs, 1e-2, args.repeats, 10)
        teacher = speedup(f"{root}/ts", TS, xt, yt, 8, 1, 32, 512, 4 * args.epochs, 1e-2, args.repeats, 1)
        packed, seq = float("inf"), float("inf")
        for r in range(args.repeats):
            packed = min(packed, cli_fit(f"{root}/w{r}", MNIST, ["--model.widths", str(WIDTHS)],
                                         args.epochs, 1e-2))
            seq = min(seq, sum(cli_fit(f"{root}/s{r}_{w}", MNIST, ["--model.width", str(w)],
                                       args.epochs, 1e-2) for w in WIDTHS))
    err = member_error()
    print(f"MNIST-1D MLP, 16 members : {mnist['per_model']:.2f}x per model "
          f"(stacked plain loop {mnist['stacked_plain']:.2f}x; fit {mnist['fit_s']:.2f} s, "
          f"one model plain {mnist['plain_s']:.3f} s)")
    print(f"teacher-student, 32      : {teacher['per_model']:.2f}x per model "
          f"(stacked plain loop {teacher['stacked_plain']:.2f}x; fit {teacher['fit_s']:.2f} s)")
    print(f"widths {WIDTHS}: one fit {packed:.2f} s, seven single fits {seq:.2f} s")
    print(f"largest member-vs-single difference after a few float32 steps: {err:.3g}")
    print(json.dumps({
        "per_model_speedup": round(mnist["per_model"], 3),
        "stacked_plain_speedup": round(mnist["stacked_plain"], 3),
        "fraction_of_stacking_kept": round(mnist["per_model"] / mnist["stacked_plain"], 3),
        "teacher_student_speedup": round(teacher["per_model"], 3),
        "teacher_student_stacked_plain_speedup": round(teacher["stacked_plain"], 3),
        "widths_speedup": round(seq / packed, 3),
        "max_member_error": err,
    }))


if __name__ == "__main__":
    main()

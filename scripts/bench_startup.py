"""Start-up cost of a small fit: the whole ``overparam-lit fit`` process against a plain script.

Measures, each in fresh subprocesses:

- ``quickstart_process_ratio``: wall time of ``overparam-lit fit -c configs/quickstart.yaml`` as a
  user runs it (W&B offline through ``WANDB_MODE``, a fresh temporary run folder each time)
  divided by that of a plain Python script that imports torch, loads the same MNIST-1D (through
  the on-disk data cache the fit uses, generating it with ``mnist1d`` on a miss), trains the same
  MLP (2 x 256 ReLU, Adam lr 1e-3, batch 100, 40 epochs) with one evaluation on the test split
  per epoch, and writes a CSV. Both use the thread count the fit chooses by default (read from
  its first line). The runs alternate; medians of ``--repeats``. On a shared machine the load of
  other processes only adds time: ``quickstart_min_ratio`` divides the fastest fit by the fastest
  plain run.
- ``second_fit_data_seconds``: ``MNIST1D().setup("fit")`` in a second fresh process, once the
  first has filled a fresh cache folder (``first_fit_data_seconds`` beside it).
- ``import_seconds``: ``import overparam_lit.cli`` with W&B disabled, beside
  ``torch_import_seconds`` (``import torch`` alone) and ``lightning_import_seconds`` (``import
  lightning`` alone: the floor of any Lightning CLI); medians of ``--repeats``.

The last line is JSON.

    python scripts/bench_startup.py [--repeats 5] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLAIN = r'''
import csv, importlib.util, sys, time
import torch

threads, epochs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
ARGS = {"num_samples": 5000, "train_split": 0.8, "seed": 42}  # MNIST1D's defaults


def generate():
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = ARGS["num_samples"], ARGS["train_split"], ARGS["seed"]
    d = make_dataset(args)
    return {"x_train": torch.tensor(d["x"], dtype=torch.float32).unsqueeze(1),
            "y_train": torch.tensor(d["y"], dtype=torch.long),
            "x_test": torch.tensor(d["x_test"], dtype=torch.float32).unsqueeze(1),
            "y_test": torch.tensor(d["y_test"], dtype=torch.long)}


CACHE = "@CACHE@"
if CACHE:  # the fit's own cache file, without importing the data modules (and Lightning)
    spec = importlib.util.spec_from_file_location("_data_cache", CACHE)
    cache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cache)
    data = cache.cached_tensors("mnist1d", ARGS, generate, packages=("mnist1d",),
                                keys=("x_train", "y_train", "x_test", "y_test"))
else:
    data = generate()
x, y, xt, yt = data["x_train"].flatten(1), data["y_train"], data["x_test"].flatten(1), data["y_test"]

torch.manual_seed(0)
nn = torch.nn
net = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
rows = []
for epoch in range(epochs):
    net.train()
    perm = torch.randperm(len(x))
    total = 0.0
    for i in range(0, len(x), 100):
        idx = perm[i:i + 100]
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss) * len(idx)
    net.eval()
    with torch.no_grad():
        logits = net(xt)
        rows.append([epoch, total / len(x), float(torch.nn.functional.cross_entropy(logits, yt)),
                     float((logits.argmax(1) == yt).float().mean())])
with open(out, "w", newline="") as fh:
    csv.writer(fh).writerows([["epoch", "train_loss", "val_loss", "val_acc"], *rows])
'''

DATA = r'''
import sys, time
from overparam_lit.data import MNIST1D

dm = MNIST1D(cache_dir=sys.argv[1])
t = time.perf_counter()
dm.setup("fit")
print(time.perf_counter() - t)
'''

IMPORT = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of a subprocess (which must succeed) and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def last_float(text: str) -> float:
    return float(text.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40, help="epochs of both (quickstart.yaml: 40)")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cache = REPO / "overparam_lit" / "data" / "cache.py"
    plain_src = PLAIN.replace("@CACHE@", str(cache) if cache.is_file() else "")
    exe = Path(sys.executable).parent / "overparam-lit"
    fit_cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "overparam_lit"]

    fits, plains, threads = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(plain_src)
        for i in range(args.repeats):
            root = Path(tmp) / f"run{i}"
            seconds, out = run([*fit_cmd, "fit", "-c", "configs/quickstart.yaml",
                                "--trainer.max_epochs", str(args.epochs),
                                "--trainer.default_root_dir", str(root)], env)
            found = re.search(r"threads (\d+) \(([^)]*)\)", out.splitlines()[0] if out else "")
            n = int(found.group(1)) if found else 1
            threads.append(f"{n} ({found.group(2) if found else 'not printed'})")
            fits.append(seconds)
            csv_out = str(Path(tmp) / f"plain{i}.csv")
            seconds, _ = run([sys.executable, str(script), str(n), str(args.epochs), csv_out], env)
            plains.append(seconds)
            print(f"repeat {i + 1}: fit {fits[-1]:.2f} s, plain {plains[-1]:.2f} s, threads {threads[-1]}",
                  flush=True)

        data_script = Path(tmp) / "data.py"
        data_script.write_text(DATA)
        cache_dir = str(Path(tmp) / "cache")
        first = last_float(run([sys.executable, str(data_script), cache_dir], env)[1])
        second = last_float(run([sys.executable, str(data_script), cache_dir], env)[1])

    off = {**env, "WANDB_MODE": "disabled"}
    cli_s, torch_s, lightning_s = [], [], []
    for _ in range(args.repeats):
        cli = IMPORT.format(module="overparam_lit.cli")
        cli_s.append(last_float(run([sys.executable, "-c", cli], off)[1]))
        torch_s.append(last_float(run([sys.executable, "-c", IMPORT.format(module="torch")], off)[1]))
        lightning_s.append(last_float(run([sys.executable, "-c", IMPORT.format(module="lightning")], off)[1]))

    fit_med, plain_med = statistics.median(fits), statistics.median(plains)
    print(f"fit process {fit_med:.2f} s, plain script {plain_med:.2f} s (medians of {args.repeats})")
    print(f"data: first fit {first:.3f} s, second fit {second:.3f} s")
    print(f"import overparam_lit.cli {statistics.median(cli_s):.2f} s, "
          f"import torch {statistics.median(torch_s):.2f} s, "
          f"import lightning {statistics.median(lightning_s):.2f} s")
    print(json.dumps({
        "quickstart_process_ratio": round(fit_med / plain_med, 3),
        "quickstart_min_ratio": round(min(fits) / min(plains), 3),
        "fit_process_seconds": round(fit_med, 2),
        "plain_process_seconds": round(plain_med, 2),
        "threads": threads[0] if len(set(threads)) == 1 else threads,
        "second_fit_data_seconds": round(second, 4),
        "first_fit_data_seconds": round(first, 4),
        "import_seconds": round(statistics.median(cli_s), 3),
        "torch_import_seconds": round(statistics.median(torch_s), 3),
        "lightning_import_seconds": round(statistics.median(lightning_s), 3),
        "repeats": args.repeats,
        "epochs": args.epochs,
    }))


if __name__ == "__main__":
    main()

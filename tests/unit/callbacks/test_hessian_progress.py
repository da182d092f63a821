"""A Hessian probe says what it will cost before it runs and how far it is while it runs; the
quick fragment's defaults, the full fragment and the study configs resolve to the documented values."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger

from overparam_lit.callbacks.hessian import HessianProbe, _say
from overparam_lit.cli import main
from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP
from overparam_lit.testing import tiny_trainer
from overparam_lit.utils import ConfigError

REPO = Path(__file__).resolve().parents[3]
START = re.compile(
    r"^hessian probe step (?P<step>\d+): (?P<params>[\d,-]+) parameters x (?P<members>\d+) members?, "
    r"(?P<samples>\d+) samples; at most (?P<total>\d+) products \((?P<budget>[^)]*)\); "
    r"about (?P<estimate>[\d.]+) (?P<unit>s|min) \(first product [\d.]+ m?s, then [\d.]+ m?s each\)$")
PROGRESS = re.compile(r"^hessian probe step (\d+): (\d+)/(\d+) products, \d+ s$")
DONE = re.compile(r"^hessian probe step (\d+): done, (\d+) products, \d+ s$")


def fit(model, probe, tmp_path, steps=2):
    trainer = tiny_trainer(tmp_path, [probe], max_steps=steps, limit_val_batches=0,
                           logger=CSVLogger(tmp_path, name="csv"))
    trainer.fit(model, datamodule=MNIST1D(num_samples=400, batch_size=50, train_subset=200))
    with open(next(tmp_path.glob("csv/**/metrics.csv"))) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("hessian/num_hvps")]
    return rows


def lines(err: str, pattern: re.Pattern) -> list[re.Match]:
    return [m for m in (pattern.match(line) for line in err.splitlines()) if m]


def mlp_params(width: int) -> int:
    """An MNIST-1D MLP with one hidden layer: 40 inputs, ``width`` units, 10 classes."""
    return 40 * width + width + width * 10 + 10


def test_start_line_names_size_budget_and_estimate(tmp_path, capfd):
    probe = HessianProbe(schedule="steps", every=2, probe_size=50, k=2, lanczos_iters=10, bottom_iters=16,
                         slq_runs=2, slq_iters=5, per_layer=True, save_figure=False, progress_every=60)
    rows = fit(MLP(width=8, depth=1), probe, tmp_path)
    starts = lines(capfd.readouterr().err, START)
    assert [int(m["step"]) for m in starts] == [0, 2]
    first = starts[0]
    assert first["params"] == f"{mlp_params(8):,}" and first["members"] == "1" and first["samples"] == "50"
    assert first["budget"] == "Lanczos top 10 / bottom 16, SLQ 2 x 5, per layer 2 x 10"
    # the bottom end's budget bounds the Lanczos run; each of the 2 layers' lambda_max runs 10
    assert int(first["total"]) == 16 + 2 * 5 + 2 * 10
    assert float(first["estimate"]) >= 0
    # the logged products (single model: exactly the products spent) never exceed the start line's
    assert len(rows) == 2
    assert all(0 < float(r["hessian/num_hvps"]) <= int(first["total"]) for r in rows)


def test_budget_caps_at_the_space_and_counts_members(tmp_path, capfd):
    # widths 2 and 3: spaces of 112 and 163 parameters, smaller than the Lanczos and SLQ budgets
    probe = HessianProbe(schedule="steps", every=100, probe_size=40, k=1, lanczos_iters=150,
                         bottom_iters=400, slq_runs=2, slq_iters=200, tol=0.0, save_figure=False,
                         progress_every=0)
    rows = fit(MLP(width=3, depth=1, widths=[2, 3]), probe, tmp_path, steps=1)
    err = capfd.readouterr().err
    (start,) = lines(err, START)
    lo, hi = mlp_params(2), mlp_params(3)
    assert start["params"] == f"{lo:,}-{hi:,}" and start["members"] == "2"
    assert start["budget"] == f"Lanczos top 150 / bottom {hi}, SLQ 2 x {hi}"
    assert int(start["total"]) == 3 * hi
    (done,) = lines(err, DONE)
    assert int(done[2]) <= int(start["total"])  # products called
    assert float(rows[0]["hessian/num_hvps"]) <= int(start["total"])  # the members' mean


def test_progress_lines_when_the_interval_is_small(tmp_path, capfd):
    probe = HessianProbe(schedule="steps", every=100, probe_size=50, k=2, lanczos_iters=10,
                         bottom_iters=12, slq_runs=2, slq_iters=4, save_figure=False, progress_every=0)
    fit(MLP(width=8, depth=1), probe, tmp_path, steps=1)
    err = capfd.readouterr().err
    (start,) = lines(err, START)
    total = int(start["total"])
    progress = lines(err, PROGRESS)
    (done,) = lines(err, DONE)
    spent = int(np.load(tmp_path / "hessian" / "probe_step00000000.npz")["num_hvps"])
    assert int(done[2]) == spent <= total
    # after the start line (second product), one line for every later product, in order
    assert [int(m[2]) for m in progress] == list(range(3, spent + 1))
    assert all(int(m[3]) == total and m[1] == "0" for m in progress)
    order = [line for line in err.splitlines() if line.startswith("hessian probe")]
    assert START.match(order[0]) and DONE.match(order[-1])


def test_silent_probe_and_other_ranks_print_nothing(tmp_path, capfd):
    probe = HessianProbe(schedule="steps", every=100, probe_size=50, k=1, lanczos_iters=4,
                         slq_runs=0, save_figure=False, progress_every=None)
    rows = fit(MLP(width=4, depth=1), probe, tmp_path, steps=1)
    assert len(rows) == 1 and "hessian probe" not in capfd.readouterr().err
    _say(SimpleNamespace(is_global_zero=False), "hessian probe step 0: from rank 1")
    _say(SimpleNamespace(is_global_zero=True), "hessian probe step 0: from rank 0")
    err = capfd.readouterr().err
    assert "from rank 1" not in err and "from rank 0" in err


def test_progress_only_watches_the_probe():
    from overparam_lit.curvature import probe as cp
    from overparam_lit.curvature.subset import kept_masks, subset_names

    torch.manual_seed(0)
    model = MLP(width=6, depth=1)
    x, y, _ = MNIST1D(num_samples=400, batch_size=50, train_subset=200).probe_set(60, "train", 0)
    net, opts = model.net, cp.ProbeOptions(k=2, lanczos_iters=12, bottom_iters=20, slq_runs=2, slq_iters=6)
    args = (net, cp.probe_loss(model), x, y, subset_names(net), kept_masks(net), None, opts)
    calls: list[tuple[int, int]] = []
    watched, _ = cp.probe_network(*args, per_layer=True, progress=lambda d, t: calls.append((d, t)))
    plain, _ = cp.probe_network(*args, per_layer=True)
    budget = cp.probe_budget(net, subset_names(net), kept_masks(net), None, opts, 60, per_layer=True)
    assert budget.total == 20 + 2 * 6 + 2 * 12
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1))
    assert all(t == budget.total for _, t in calls) and watched[0].num_hvps < len(calls) <= budget.total
    np.testing.assert_array_equal(watched[0].top, plain[0].top)
    assert watched[0].num_hvps == plain[0].num_hvps and watched[0].trace == plain[0].trace


def test_progress_every_refuses_negative():
    with pytest.raises(ConfigError, match="progress_every must be >= 0"):
        HessianProbe(progress_every=-1)


# ---- resolved configs -------------------------------------------------------------------------
def resolved_probes(monkeypatch, *configs: str) -> list[dict]:
    """The HessianProbe ``init_args`` of ``fit -c ... --print_config``."""
    monkeypatch.chdir(REPO)
    args = ["fit"]
    for c in configs:
        args += ["-c", c]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        main([*args, "--print_config"])
    assert exc.value.code in (0, None)
    cfg = yaml.safe_load(out.getvalue())
    return [cb["init_args"] for cb in cfg["trainer"]["callbacks"]
            if cb["class_path"] == "overparam_lit.callbacks.hessian.HessianProbe"]


COMMON = {"schedule": "log_steps", "every": 1, "max_step": None, "probe_at_start": True, "split": "train",
          "seed": 0, "chunk_size": 1000, "tol": 1e-4, "negative_eps": 1e-2, "density_width": 0.01,
          "eval_mode": True, "method": "auto", "dtype": "float32", "params": None, "per_layer": False,
          "masks_attr": "pruning_masks", "save_figure": True, "progress_every": 10.0}
# the quick look of callbacks/hessian.yaml (README, "Hessian spectrum probes")
QUICK = {**COMMON, "num_probes": 4, "probe_size": 500, "k": 5, "lanczos_iters": 20, "bottom_iters": 40,
         "slq_runs": 2, "slq_iters": 20}
# callbacks/hessian_full.yaml: the budgets callbacks/hessian.yaml had before it became the quick look
FULL = {**COMMON, "num_probes": 12, "probe_size": 1000, "k": 5, "lanczos_iters": 100, "bottom_iters": 300,
        "slq_runs": 8, "slq_iters": 80}
# the study configs' probes as published (progress_every only prints)
STUDIES = {
    "configs/study_mnist1d_hessian.yaml": {
        **COMMON, "num_probes": 12, "probe_size": 1000, "k": 20, "lanczos_iters": 200, "bottom_iters": 300,
        "slq_runs": 8, "slq_iters": 80},
    "configs/study_teacher_student_widen.yaml": {
        **COMMON, "num_probes": 10, "probe_size": 1000, "k": 2, "lanczos_iters": 40, "bottom_iters": None,
        "slq_runs": 4, "slq_iters": 20},
}


def test_quick_fragment_resolves_to_its_documented_values(monkeypatch):
    assert resolved_probes(monkeypatch, "configs/quickstart.yaml", "callbacks/hessian.yaml") == [QUICK]


def test_full_fragment_keeps_the_old_budgets(monkeypatch):
    assert resolved_probes(monkeypatch, "configs/quickstart.yaml", "callbacks/hessian_full.yaml") == [FULL]


@pytest.mark.parametrize("config", sorted(STUDIES))
def test_study_configs_keep_their_probe_settings(monkeypatch, config):
    assert resolved_probes(monkeypatch, config) == [STUDIES[config]]

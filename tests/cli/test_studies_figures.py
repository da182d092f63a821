"""Figures of ``overparam-lit plot`` on run folders with known numbers: each figure's printed JSON
against an independent computation from the files it read, and the report page."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import spearmanr

from overparam_lit.cli import main as cli_main
from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.figures import FIGURES, draw, figures_for
from overparam_lit.studies.results import write_results
from overparam_lit.studies.runs import SweepFolder

MEMBER_COLUMNS = [
    "member",
    "seed",
    "width",
    "num_params",
    "epoch",
    "step",
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/acc_noisy",
    "test/loss",
    "test/acc",
    "test/acc_noisy",
]


def plot(capsys, *argv: str) -> dict:
    """Run ``overparam-lit plot`` and return its one JSON line."""
    assert cli_main(["plot", *argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def make_run(
    path: Path, width: int = 8, seed: int = 0, data: dict | None = None, classes: int = 10, model: str = "MLP"
) -> RunFolder:
    folder = RunFolder(path)
    path.mkdir(parents=True)
    data = data or {"class_path": "overparam_lit.data.MNIST1D", "init_args": {"label_noise": 0.15}}
    folder.config_yaml.write_text(
        yaml.safe_dump(
            {
                "seed_everything": seed,
                "model": {
                    "class_path": f"overparam_lit.models.{model}",
                    "init_args": {"width": width, "depth": 2},
                },
                "data": data,
            }
        )
    )
    folder.hparams_yaml.write_text(f"num_classes: {classes}\n")
    return folder


def write_members(folder: RunFolder, rows: list[dict]) -> None:
    with open(folder.members_csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MEMBER_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ---- double descent ----------------------------------------------------------------
TEST_ERR = {4: (0.60, 0.62), 8: (0.50, 0.52), 16: (0.56, 0.60), 32: (0.46, 0.44)}
TRAIN_ERR = {4: (0.6, 0.6), 8: (0.3, 0.32), 16: (0.0, 0.01), 32: (0.0, 0.0)}


def dd_sweep(root: Path) -> SweepFolder:
    sweep = SweepFolder(root)
    root.mkdir(parents=True)
    rows = []
    for w in TEST_ERR:
        for s in (0, 1):
            rows.append(
                {
                    "stage": "main",
                    "fit": "f",
                    "member": 0,
                    "seed": s,
                    "width": w,
                    "num_params": 10 * w,
                    "status": "done",
                    "train/acc": 1 - TRAIN_ERR[w][s],
                    "test/acc": 1 - TEST_ERR[w][s],
                    "test/acc_noisy": 0.9 - TEST_ERR[w][s],
                }
            )
    rows.append({"stage": "main", "fit": "g", "member": 0, "seed": 0, "width": 64, "status": "failed"})
    write_results(sweep.results, rows, ["stage", "fit"])
    write_json(sweep.spec, {"name": "dd", "figure": "double-descent", "fits": []})
    return sweep


def test_double_descent_from_results(tmp_path: Path, capsys) -> None:
    sweep = dd_sweep(tmp_path / "dd")
    numbers = plot(capsys, str(sweep.root))  # the sweep's own figure
    assert numbers == json.loads(sweep.figure("double_descent", ".json").read_text())
    assert (
        numbers["figure"] == str(sweep.figure("double_descent")) and sweep.figure("double_descent").is_file()
    )
    assert numbers["test_split"] == "test" and numbers["seeds"] == 2
    for w, errs in TEST_ERR.items():
        entry = numbers["per_width"][str(w)]
        assert entry["test_error"] == pytest.approx(np.mean(errs))
        assert entry["train_error"] == pytest.approx(np.mean(TRAIN_ERR[w]))
        assert entry["test_error_noisy"] == pytest.approx(np.mean(errs) - 0.1 + 0.2)  # 1 - (0.9 - e)
        assert entry["num_params"] == 10 * w
    assert "64" not in numbers["per_width"]  # a failed fit has no numbers
    # mean train error 0.005 at width 16 <= 0.01: the threshold; the local maximum there is the peak
    assert numbers["interpolation_width"] == 16 and numbers["peak_width"] == 16
    assert numbers["peak_test_error"] == pytest.approx(0.58)
    assert (numbers["min_before_peak_width"], numbers["last_width_test_error"]) == (8, pytest.approx(0.45))
    other = tmp_path / "elsewhere.png"
    again = plot(capsys, "double-descent", str(sweep.root), "--out", str(other), "-o", "threshold=0.5")
    assert again["interpolation_width"] == 8 and other.is_file() and other.with_suffix(".json").is_file()


def test_double_descent_from_run_folders(tmp_path: Path, capsys) -> None:
    """Without results.csv the members of every run folder are read from their members.csv."""
    for w in (4, 8, 16):
        folder = make_run(tmp_path / "runs" / f"w{w}", width=w)
        rows = []
        for member, seed in enumerate((0, 1)):
            err = TEST_ERR[w][seed]
            rows += [
                {
                    "member": member,
                    "seed": seed,
                    "width": w,
                    "num_params": w,
                    "epoch": 0,
                    "step": 10,
                    "train/acc": 0.2,
                    "val/acc": 0.5,
                },
                {
                    "member": member,
                    "seed": seed,
                    "width": w,
                    "num_params": w,
                    "epoch": 1,
                    "step": 20,
                    "train/acc": 1 - TRAIN_ERR[w][seed],
                    "val/acc": 0.6,
                },
                {
                    "member": member,
                    "seed": seed,
                    "width": w,
                    "num_params": w,
                    "epoch": 2,
                    "step": 20,
                    "test/acc": 1 - err,
                    "test/acc_noisy": 0.5,
                },
            ]
        write_members(folder, rows)
    numbers = plot(capsys, "double-descent", str(tmp_path / "runs"))
    assert {k: v["test_error"] for k, v in numbers["per_width"].items()} == {
        str(w): pytest.approx(np.mean(TEST_ERR[w])) for w in (4, 8, 16)
    }
    assert numbers["per_width"]["8"]["train_error"] == pytest.approx(0.31)


# ---- lottery ----------------------------------------------------------------
def test_lottery_tickets_and_controls(tmp_path: Path, capsys) -> None:
    imp = make_run(tmp_path / "points" / "imp")
    levels = []
    for level, density in ((0, 1.0), (1, 0.5)):
        members = [
            {
                "member": i,
                "seed": s,
                "width": 8,
                "density": density,
                "test/acc": 0.6 + 0.1 * level + 0.02 * s,
                "best_val/acc": 0.7 + 0.1 * level + 0.02 * s,
            }
            for i, s in enumerate((0, 1))
        ]
        levels.append({"level": level, "density": density, "members": members})
    write_json(imp.imp_summary, {"levels": levels})
    for mode, base in (("random_reinit", 0.5), ("random_mask", 0.4), ("perturb_rest", 0.65)):
        ctrl = make_run(tmp_path / "points" / mode)
        write_json(
            ctrl.ticket_result,
            {
                "mode": mode,
                "sigma": None,
                "density": 1.0 if mode == "perturb_rest" else 0.5,
                "ticket_density": 0.5,
                "ticket_meta": {"level": 1},
                "members": [
                    {"member": i, "seed": s, "width": 8, "test/acc": base + 0.04 * s}
                    for i, s in enumerate((0, 1))
                ],
            },
        )
        write_members(
            ctrl,
            [
                {"member": i, "seed": s, "width": 8, "epoch": e, "step": e, "val/acc": base + 0.1 * e}
                for i, s in enumerate((0, 1))
                for e in (0, 1)
            ],
        )
    numbers = plot(capsys, "lottery", str(tmp_path))
    final, best = numbers["final"], numbers["best"]
    assert final["ticket"]["1"]["mean"] == pytest.approx(0.61) and final["ticket"]["0.5"][
        "mean"
    ] == pytest.approx(0.71)
    assert final["ticket"]["0.5"]["lo"] == pytest.approx(0.70) and final["ticket"]["0.5"]["seeds"] == 2
    assert final["random_reinit"]["0.5"]["mean"] == pytest.approx(0.52)
    assert final["random_mask"]["0.5"]["mean"] == pytest.approx(0.42)
    assert final["perturb_rest"]["0.5"]["mean"] == pytest.approx(0.67)  # at its ticket's density
    assert best["ticket"]["0.5"]["mean"] == pytest.approx(0.81)
    assert best["random_reinit"]["0.5"]["mean"] == pytest.approx(0.6)  # max over epochs of members.csv
    assert numbers["dense"] == {"final": pytest.approx(0.61), "best": pytest.approx(0.71)}
    (row,) = numbers["comparison"]
    assert (
        row["level"] == 1
        and row["ticket"] == pytest.approx(0.71)
        and row["random_mask"] == pytest.approx(0.42)
    )


# ---- Hessian ---------------------------------------------------------------------------------------------
def probe_file(
    folder: RunFolder,
    step: int,
    epoch: int,
    tops: list[np.ndarray],
    negs: list[float],
    losses: list[float] | None,
    width: int = 8,
) -> None:
    folder.hessian.mkdir(parents=True, exist_ok=True)
    m = len(tops)
    arrays = {
        "step": np.int64(step),
        "epoch": np.int64(epoch),
        "top": np.stack(tops),
        "lambda_max": np.array([t[0] for t in tops]),
        "lambda_min": np.array([-0.1] * m),
        "lambda_min_bound": np.array([-0.05] * m),
        "negative_fraction": np.array(negs),
        "trace": np.array([2.0 * width] * m),
        "member_seed": np.arange(m),
        "member_width": np.full(m, width),
        "density_grid": np.linspace(-1, 5, 30),
        "density": np.stack([np.exp(-(np.linspace(-1, 5, 30) ** 2))] * m),
    }
    if losses is not None:
        arrays["loss"] = np.array(losses)
    np.savez(folder.hessian_probe(step), **arrays)


def test_hessian_index_against_loss_and_outliers(tmp_path: Path, capsys) -> None:
    # ten large eigenvalues, a factor-10 gap, then the bulk: 10 outliers; member 1 shows 9
    ten = np.array([100.0 - i for i in range(10)] + [9.0, 8.5, 8.0])
    nine = np.array([100.0 - i for i in range(9)] + [9.0, 8.5, 8.0, 7.5])
    with_loss = make_run(tmp_path / "points" / "a", width=8)
    steps = [0, 1, 4, 16, 64]
    loss = {0: [2.3, 2.2, 1.9, 1.2, 0.5], 1: [2.3, 2.1, 2.0, 1.0, 0.4]}
    neg = {0: [0.30, 0.25, 0.20, 0.10, 0.02], 1: [0.31, 0.20, 0.24, 0.08, 0.01]}
    for i, step in enumerate(steps):
        probe_file(with_loss, step, 0, [ten, nine], [neg[0][i], neg[1][i]], [loss[0][i], loss[1][i]])
    # a run without the probe's own loss: the epoch-mean training loss at the probe's step
    no_loss = make_run(tmp_path / "points" / "b", width=16, classes=4)
    write_members(
        no_loss,
        [
            {
                "member": 0,
                "seed": 0,
                "width": 16,
                "epoch": e,
                "step": 10 * (e + 1),
                "train/loss": 2.0 - 0.5 * e,
            }
            for e in range(3)
        ],
    )
    for step, n in ((5, 0.4), (15, 0.2), (25, 0.1)):
        probe_file(
            no_loss, step, step // 10, [np.array([4.0, 3.0, 2.0, 1.0, 0.1, 0.09])], [n], None, width=16
        )
    numbers = plot(capsys, "hessian", str(tmp_path))
    series = {(Path(p["run"]).name, p["member"]): p["probes"] for p in numbers["probes"]}
    assert [p["outliers"] for p in series[("a", 0)]] == [10] * 5 and series[("a", 1)][0]["outliers"] == 9
    assert series[("b", 0)][0]["outliers"] == 4
    # epoch e's mean loss sits at the middle of its epoch (step 10e + 5): interpolated at 5, 15, 25
    assert [p["loss"] for p in series[("b", 0)]] == pytest.approx([2.0, 1.5, 1.0])
    all_loss = loss[0] + loss[1] + [2.0, 1.5, 1.0]
    all_neg = neg[0] + neg[1] + [0.4, 0.2, 0.1]
    assert numbers["spearman"] == pytest.approx(spearmanr(all_loss, all_neg).statistic)
    assert numbers["spearman_per_member"] == pytest.approx([1.0, spearmanr(loss[1], neg[1]).statistic, 1.0])
    assert numbers["negative_fraction_first"] == pytest.approx(np.mean([0.30, 0.31, 0.4]))
    assert numbers["loss_last"] == pytest.approx(np.mean([0.5, 0.4, 1.0]))
    assert numbers["outliers_by_classes"] == {"4": 4.0, "10": 9.5} and numbers["num_classes"] == [4, 10]
    assert numbers["by_classes"]["10"]["last"] == [10, 9] and numbers["by_classes"]["4"]["max"] == [4]
    assert numbers["outliers_by_classes_largest_gap"] == {"4": 4.0, "10": 9.5}
    assert numbers["loss_source"] == ["probe", "train_epoch_mean"] and numbers["members"] == 3
    spectra = plot(capsys, "spectra", str(tmp_path))
    assert spectra["widths"] == [8, 16]
    assert spectra["last_probe"]["8"] == {
        "seeds": 2,
        "step": 64,
        "lambda_max": 100.0,
        "lambda_min": -0.1,
        "negative_fraction": pytest.approx(0.015),
        "trace": 16.0,
    }
    assert spectra["last_probe"]["16"]["lambda_max"] == 4.0


# ---- decision regions ----------------------------------------------------------------
def test_regions_fragmentation_and_planes(tmp_path: Path, capsys) -> None:
    from overparam_lit.regions import make_plane_bank

    gen = torch.Generator().manual_seed(0)
    bank = make_plane_bank(
        torch.randn(30, 1, 6, generator=gen),
        torch.arange(30) % 3,
        torch.arange(30) % 3,
        2,
        8,
        "distinct_classes",
        margin=0.5,
        seed=0,
    )
    shared = bank.save(tmp_path / "bank.pt")
    frag = {4: [3.0, 2.0], 16: [1.5, 1.0]}
    for w in frag:
        folder = make_run(tmp_path / "points" / f"w{w}", width=w, classes=3)
        folder.regions.mkdir()
        snaps = []
        for epoch in (0, 5):
            pred = np.stack([(np.arange(128).reshape(2, 8, 8) // (w * (epoch + 1) + s)) % 3 for s in (0, 1)])
            np.savez(
                folder.regions_maps(epoch),
                pred=pred,
                confidence=np.ones(pred.shape),
                margin=np.ones(pred.shape),
                anchor_pred=np.zeros((2, 2, 3), dtype=np.int64),
            )
            snaps.append(
                {
                    "epoch": epoch,
                    "step": epoch * 10,
                    "maps": folder.regions_maps(epoch).name,
                    "regions/fragmentation": 9.0,
                    "members": [
                        {
                            "member": i,
                            "seed": s,
                            "width": w,
                            "regions/fragmentation": frag[w][i] + 5 - epoch,
                            "regions/fragmentation_raw": 2 * frag[w][i],
                            "regions/boundary_fraction": 0.1 * w,
                        }
                        for i, s in enumerate((0, 1))
                    ],
                }
            )
        write_json(folder.regions_history, {"bank": str(shared), "snapshots": snaps})
    numbers = plot(capsys, "regions", str(tmp_path))
    assert numbers["per_width"]["4"] == {
        "seeds": 2,
        "epoch": 5,
        "fragmentation": 2.5,
        "fragmentation_raw": 5.0,
        "boundary_fraction": pytest.approx(0.4),
    }
    assert numbers["per_width"]["16"]["fragmentation"] == 1.25 and numbers["peak_width"] == 4
    assert Path(numbers["planes_figure"]).stat().st_size > 1000


# ---- teacher-student success ----------------------------------------------------------------
TEACHER = {
    "class_path": "overparam_lit.data.TeacherStudent",
    "init_args": {
        "input_dim": 2,
        "teacher_width": 4,
        "task": "regression",
        "num_classes": 1,
        "n_train": 300,
        "n_test": 50,
        "data_seed": 3,
    },
}


def target_variance() -> float:
    """The variance of the training targets, from the data module itself."""
    from overparam_lit.data import TeacherStudent

    dm = TeacherStudent(**TEACHER["init_args"])
    dm.setup("fit")
    _, y, _ = dm.probe_set(None, "train")
    return float(y.var(unbiased=False))


def test_success_rates_and_multistart_prediction(tmp_path: Path, capsys) -> None:
    var = target_variance()
    wins = {4: 3, 5: 6, 8: 10}  # of 10 seeds each
    folder = make_run(tmp_path / "points" / "ts", width=8, data=TEACHER, classes=1)
    rows = []
    for w, k in wins.items():
        for s in range(10):
            rel = 1e-3 if s < k else 2e-2
            rows.append(
                {"member": len(rows), "seed": s, "width": w, "epoch": 9, "step": 90, "train/loss": rel * var}
            )
    write_members(folder, rows)
    numbers = plot(capsys, "success", str(tmp_path))
    assert numbers["target_variance"] == pytest.approx(var, rel=1e-6) and numbers["r_star"] == 4
    by = {r["width"]: r for r in numbers["per_width"]}
    for w, k in wins.items():
        assert (by[w]["successes"], by[w]["trials"], by[w]["rate"]) == (k, 10, k / 10)
        assert (by[w]["low"], by[w]["high"]) == pytest.approx(wilson(k, 10))
    lo, hi = wilson(3, 10)
    for n in (5, 8):
        count = math.comb(n, 4)
        assert by[n]["subnetworks"] == count
        assert by[n]["prediction"] == pytest.approx(1 - 0.7**count)
        assert (by[n]["prediction_low"], by[n]["prediction_high"]) == pytest.approx(
            (1 - (1 - lo) ** count, 1 - (1 - hi) ** count)
        )
    stricter = plot(capsys, "success", str(tmp_path), "-o", "threshold=1e-4")
    assert all(r["successes"] == 0 for r in stricter["per_width"])


def test_ticket_perturbation_success_against_sigma(tmp_path: Path, capsys) -> None:
    var = target_variance()
    for w in (8, 16):
        imp = make_run(tmp_path / "points" / f"imp{w}", width=w, data=TEACHER, classes=1)
        levels = [
            {
                "level": lv,
                "density": d,
                "members": [
                    {
                        "member": s,
                        "seed": s,
                        "width": w,
                        "train/loss": var * (1e-3 if (lv == 0 or s == 0) else 1.0),
                    }
                    for s in range(4)
                ],
            }
            for lv, d in ((0, 1.0), (1, 0.25))
        ]
        write_json(imp.imp_summary, {"levels": levels})
        for mode, sigma, good in (
            ("ticket", None, 0),
            ("perturb_rest", None, 4),
            ("perturb_rest", 0.0, 4),
            ("perturb_rest", 3.0, 1 if w == 8 else 2),
        ):
            ctrl = make_run(tmp_path / "points" / f"{mode}{sigma}_{w}", width=w, data=TEACHER, classes=1)
            write_json(
                ctrl.ticket_result,
                {
                    "mode": mode,
                    "sigma": sigma,
                    "density": 1.0,
                    "ticket_density": 0.25,
                    "ticket_meta": {"level": 1},
                    "members": [
                        {"member": s, "seed": s, "width": w, "train/loss": var * (1e-3 if s < good else 1.0)}
                        for s in range(4)
                    ],
                },
            )
    numbers = plot(capsys, "ticket-perturb", str(tmp_path))
    assert numbers["sigmas"] == [0.0, 3.0] and numbers["target_variance"] == pytest.approx(var, rel=1e-6)
    for w, at3 in (("8", 1), ("16", 2)):
        entry = numbers["per_width"][w]
        assert entry["dense"]["successes"] == 4 and entry["redrawn"]["successes"] == 4
        assert (
            entry["removed"]["successes"] == 0 and entry["removed"]["trials"] == 4
        )  # TicketStart's, not IMP's
        assert entry["sigma"]["0"]["successes"] == 4 and entry["sigma"]["3"]["successes"] == at3
        assert (entry["sigma"]["3"]["low"], entry["sigma"]["3"]["high"]) == pytest.approx(wilson(at3, 4))


# ---- widening ----------------------------------------------------------------
def test_widen_before_after_and_controls(tmp_path: Path, capsys) -> None:
    widened = make_run(tmp_path / "points" / "wide", width=3, data=TEACHER, classes=1)
    control = make_run(tmp_path / "points" / "control", width=3, data=TEACHER, classes=1)
    before, after = [1e-3, 2e-3], [1e-3 + 1e-9, 2e-3]
    write_json(
        widened.root / "widen" / "widen.json",
        {
            "step": 30,
            "method": "duplicate",
            "width_before": 3,
            "width_after": 4,
            "probes": {"before": 29, "after": 30},
            "members": [
                {"member": i, "seed": s, "loss_before": before[i], "loss_after": after[i]}
                for i, s in enumerate((0, 1))
            ],
        },
    )
    top = [np.array([2.0, 1.0]), np.array([2.0, 1.0])]
    for folder, step, mins in (
        (widened, 29, [1e-4, 2e-4]),
        (widened, 30, [-3e-4, -5e-4]),
        (control, 30, [1e-4, 1e-4]),
    ):
        probe_file(folder, step, 3, top, [0.0, 0.0], None)
        with np.load(folder.hessian_probe(step)) as z:
            arrays = dict(z)
        arrays["lambda_min"] = np.array(mins)
        arrays["lambda_min_bound"] = np.array(mins)
        np.savez(folder.hessian_probe(step), **arrays)
    for folder, finals in ((widened, [1e-5, 1.5e-3]), (control, [9e-4, 1.8e-3])):
        write_members(
            folder,
            [
                {"member": i, "seed": s, "width": 3, "epoch": 5, "step": 60, "train/loss": finals[i]}
                for i, s in enumerate((0, 1))
            ],
        )
    numbers = plot(capsys, "widen", str(tmp_path))
    assert (numbers["step"], numbers["width_before"], numbers["width_after"]) == (30, 3, 4)
    assert numbers["loss_before"] == pytest.approx(1.5e-3) and numbers[
        "max_abs_loss_change"
    ] == pytest.approx(1e-9)
    assert numbers["lambda_min_before"] == pytest.approx(1.5e-4) and numbers[
        "lambda_min_after"
    ] == pytest.approx(-4e-4)
    assert numbers["negative_curvature_after"] == 2
    assert numbers["escaped"] == 1 and numbers["compared"] == 2  # 1e-5 < 0.5 x 9e-4; 1.5e-3 >= 0.5 x 1.8e-3
    assert numbers["final_loss_control"] == pytest.approx(np.median([9e-4, 1.8e-3]))


# ---- registry and report ----------------------------------------------------------------
def test_registry_and_report(tmp_path: Path) -> None:
    assert set(FIGURES) == {
        "double-descent",
        "lottery",
        "lottery-ablation",
        "hessian",
        "spectra",
        "regions",
        "success",
        "widen",
        "ticket-perturb",
    }
    sweep = dd_sweep(tmp_path / "dd")
    with pytest.raises(Exception, match="has no such option"):
        draw("double-descent", sweep.root, colour="red")
    from overparam_lit.studies.report import write_report

    page = write_report(sweep.root).read_text()
    assert page.count("data:image/png;base64,") == 1 and "<section id='double-descent'>" in page
    assert "peak_test_error" in page and "<table>" in page and "Results (one row per member)" in page
    assert figures_for(sweep.root) == []  # no run folders here: only the sweep's own figure is drawn

"""The study configs (``configs/study_*.yaml``): every one plans, and (slow) every one runs end to end
at a reduced size through ``overparam-lit sweep`` and ``overparam-lit plot``; the lottery study keeps
its science (tickets beat their random controls)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from overparam_lit.cli import main as cli_main
from overparam_lit.runfolder import RunFolder
from overparam_lit.studies.figures import FIGURES
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.spec import make_plan, read_study
from overparam_lit.studies.sweep import main as sweep_main

REPO = Path(__file__).resolve().parents[2]
STUDIES = sorted((REPO / "configs").glob("study_*.yaml"))

# reduced runs: (config, --set arguments, expected fits, expected members, figure keys)
REDUCED = {
    "study_mnist1d_double_descent": (
        ["trainer.max_epochs=2"],
        2,
        30,
        ["peak_width", "peak_test_error", "interpolation_width"],
    ),
    "study_mnist1d_lottery": (["trainer.max_epochs=2"], 16, 48, ["final", "best", "dense", "comparison"]),
    "study_mnist1d_hessian": (
        [
            "trainer.max_epochs=1",
            "trainer.callbacks.k=3",
            "trainer.callbacks.lanczos_iters=12",
            "trainer.callbacks.bottom_iters=12",
            "trainer.callbacks.slq_runs=2",
            "trainer.callbacks.slq_iters=10",
            "trainer.callbacks.num_probes=3",
        ],
        2,
        6,
        ["spearman", "outliers_by_classes", "negative_fraction_last"],
    ),
    "study_mnist1d_regions": (
        ["trainer.max_epochs=3", "trainer.callbacks.num_planes=2", "trainer.callbacks.resolution=16"],
        3,
        14,
        ["per_width", "peak_width"],
    ),
    "study_teacher_student_success": (["trainer.max_epochs=3"], 2, 250, ["per_width", "p_at_r_star"]),
    "study_teacher_student_widen": (
        ["trainer.max_epochs=4", "main:trainer.callbacks.step=20"],
        2,
        16,
        ["loss_before", "lambda_min_after", "escaped"],
    ),
    "study_teacher_student_ticket_perturb": (["trainer.max_epochs=3"], 16, 512, ["per_width", "sigmas"]),
}


def test_every_study_config_plans_and_names_a_figure(tmp_path: Path) -> None:
    assert {p.stem for p in STUDIES} >= set(REDUCED)
    for path in STUDIES:
        spec = read_study([path])
        assert spec is not None and spec.figure in FIGURES, path.name
        plan = make_plan(spec, [str(path)], tmp_path / path.stem)
        assert plan.fits and all(f.folder.parent == tmp_path / path.stem / "points" for f in plan.fits)
        later = [f for f in plan.fits if f.stage != "main"]
        assert all(f.deps or path.stem == "study_teacher_student_widen" for f in later), path.name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REDUCED))
def test_study_runs_end_to_end_reduced(tmp_path: Path, capsys, name: str) -> None:
    fixed, fits, members, keys = REDUCED[name]
    out = tmp_path / name
    argv = ["-c", str(REPO / "configs" / f"{name}.yaml"), "--out", str(out), "--set", "wandb.mode=disabled"]
    for item in fixed:
        argv += ["--set", item]
    assert sweep_main(argv) == 0, capsys.readouterr().out[-3000:]
    capsys.readouterr()
    folder = SweepFolder(out)
    with open(folder.fits) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == fits and {r["status"] for r in table} == {"done"}
    with open(folder.results) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == members
    # one row per member: the members of each fit are those of its members.csv (or its single model)
    for fit in table:
        run = RunFolder(fit["folder"])
        own = {r["member"] for r in run.read_members()} or {"0"}
        assert {r["member"] for r in rows if r["fit"] == fit["fit"]} == own
    spec = json.loads(folder.spec.read_text())
    assert cli_main(["plot", str(out)]) == 0
    numbers = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(keys) <= set(numbers) and Path(numbers["figure"]).is_file()
    assert numbers == json.loads(folder.figure(spec["figure"].replace("-", "_"), ".json").read_text())


@pytest.mark.slow
def test_cifar_study_runs_on_tiny_files(tmp_path: Path, cifar10_root, capsys) -> None:
    root, _ = cifar10_root
    out = tmp_path / "cifar"
    argv = [
        "-c",
        str(REPO / "configs" / "study_cifar10_cnn_width.yaml"),
        "--out",
        str(out),
        "--grid",
        "model.init_args.width=1,2",
        "--set",
        f"data.init_args.root={root}",
        "--set",
        "trainer.max_epochs=1",
        "--set",
        "trainer.accelerator=cpu",
        "--set",
        "data.init_args.batch_size=8",
        "--set",
        "wandb.mode=disabled",
    ]
    assert sweep_main(argv) == 0
    with open(SweepFolder(out).results) as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((int(r["width"]), int(r["seed"])) for r in rows) == [
        (w, s) for w in (1, 2) for s in (0, 1, 2)
    ]


@pytest.mark.slow
def test_lottery_tickets_beat_random_controls(tmp_path: Path) -> None:
    """MNIST-1D IMP tickets at density 0.19 beat their random controls (3 seeds, 40 epochs a level)."""
    out = tmp_path / "lottery"
    assert (
        sweep_main(
            [
                "-c",
                str(REPO / "configs" / "study_mnist1d_lottery.yaml"),
                "--out",
                str(out),
                "--set",
                "trainer.max_epochs=40",
                "--set",
                "wandb.mode=disabled",
                "--grid",
                "trainer.callbacks.ticket={main.imp_level:8}",
            ]
        )
        == 0
    )
    from overparam_lit.studies.figures.lottery import lottery_rows, summarise

    rows = lottery_rows(out)
    numbers = summarise(rows)
    (level,) = numbers["comparison"]
    assert level["level"] == 8 and level["density"] <= 0.2
    assert level["ticket"] > level["random_reinit"] + 0.03 and level["ticket"] > level["random_mask"] + 0.03
    for seed in (0, 1, 2):  # and the ticket wins in every seed, not just on average
        acc = {r["mode"]: r["final"] for r in rows if r["seed"] == seed and r["level"] == 8}
        assert acc["ticket"] > max(acc["random_reinit"], acc["random_mask"]), (seed, acc)

"""Studies: the sweep block (grids, packing seeds and widths into member fits, stages that refer to
earlier run folders), the sweep runner on tiny studies (results.csv against members.csv, skip,
resume, retry, bad input), W&B sweep files, submitit, and the fit CLI ignoring the block."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from overparam_lit.cli import main as cli_main
from overparam_lit.runfolder import RunFolder
from overparam_lit.studies import cli_text, make_plan, parse_grid_arg, parse_sweep_block, parse_value
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.sweep import Sweep
from overparam_lit.studies.sweep import main as sweep_main
from overparam_lit.testing import TINY_STUDY_BASE
from overparam_lit.utils import ConfigError

REPO = Path(__file__).resolve().parents[2]

BASE = TINY_STUDY_BASE


def study(tmp_path: Path, block: dict, name: str = "study.yaml", **changes) -> Path:
    """A study config: BASE (updated by ``changes``) plus a sweep block."""
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        cfg[key] = value
    cfg["sweep"] = block
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def arg(args: list[str], key: str) -> str:
    """The value after ``--key`` (the last one)."""
    idx = [i for i, a in enumerate(args) if a == f"--{key}"]
    assert idx, (key, args)
    return args[idx[-1] + 1]


# ---- values and the sweep block ---------------------------------------------------------------------
def test_grid_values_and_cli_text() -> None:
    assert parse_grid_arg("model.init_args.width=2, 4,8") == ("model.init_args.width", [2, 4, 8])
    assert parse_grid_arg("--seed_everything=range(3)") == ("seed_everything", [0, 1, 2])
    assert parse_grid_arg("data.init_args.noise_model=uniform") == ("data.init_args.noise_model", ["uniform"])
    assert parse_grid_arg("trainer.callbacks.ticket={main.imp_level:8}")[1] == ["{main.imp_level:8}"]
    assert parse_value("{a: 1}") == {"a": 1}
    assert [parse_value(v) for v in ("8", "0.15", "true", "null", "relu", "[1, 2]")] == \
        [8, 0.15, True, None, "relu", [1, 2]]
    assert [cli_text(v) for v in (None, True, 0.1, [0, 1], {"a": 1}, "x")] == \
        ["null", "true", "0.1", "[0, 1]", "{a: 1}", "x"]
    for bad in ("model.width", "model.width=", "model.width=2,,4", "=2,4", "bad key=1"):
        with pytest.raises(ConfigError):
            parse_grid_arg(bad)


def test_packing_seeds_and_width_groups(tmp_path: Path) -> None:
    spec = parse_sweep_block({
        "grid": {"model.init_args.width": [4, 8, 16, 64], "seed_everything": "range(3)",
                 "data.init_args.label_noise": [0.0, 0.15]},
        "pack": "all", "width_groups": [[4, 8, 16], [64]]})
    plan = make_plan(spec, ["c.yaml"], tmp_path / "s")
    assert [f.name for f in plan.fits] == [
        "label_noise-0.0_seeds-0to2_widths-4.8.16", "label_noise-0.0_seeds-0to2_widths-64",
        "label_noise-0.15_seeds-0to2_widths-4.8.16", "label_noise-0.15_seeds-0to2_widths-64"]
    fit = plan.fits[2]
    assert fit.seeds == [0, 1, 2] and fit.widths == [4, 8, 16] and fit.num_members == 9
    assert fit.values == {"data.init_args.label_noise": 0.15}
    assert arg(fit.args, "model.init_args.seeds") == "[0, 1, 2]"
    assert arg(fit.args, "model.init_args.widths") == "[4, 8, 16]"
    assert arg(fit.args, "seed_everything") == "0" and arg(fit.args, "sweep") == "null"
    assert "--model.init_args.width" not in fit.args  # packed: the stack's widths replace it
    cmd = plan.command(fit)
    assert cmd[1:5] == ["-m", "overparam_lit", "fit", "-c"] and arg(cmd, "wandb.group") == "s"
    assert arg(cmd, "trainer.default_root_dir") == str(tmp_path / "s" / "points" / fit.name)
    # seeds only: one fit per width; none: one fit per point, each a single model
    spec = parse_sweep_block({"grid": {"model.width": [2, 4], "seed_everything": [0, 5]}, "pack": "seeds"})
    fits = make_plan(spec, [], tmp_path / "s").fits
    assert [(f.name, f.seeds, f.widths) for f in fits] == [("width-2_seeds-0.5", [0, 5], None),
                                                          ("width-4_seeds-0.5", [0, 5], None)]
    assert arg(fits[0].args, "model.seeds") == "[0, 5]" and arg(fits[0].args, "model.width") == "2"
    spec = parse_sweep_block({"grid": {"model.width": [2, 4], "seed_everything": [0, 5]}})
    fits = make_plan(spec, [], tmp_path / "s").fits
    assert len(fits) == 4 and all(f.num_members == 1 for f in fits)
    assert arg(fits[1].args, "seed_everything") == "5"


def test_stages_refer_to_earlier_run_folders(tmp_path: Path) -> None:
    spec = parse_sweep_block({
        "grid": {"model.init_args.width": [8, 16], "seed_everything": "range(2)"}, "pack": "seeds",
        "set": {"trainer.callbacks.bank_path": "{sweep}/bank.pt"},
        "stages": [{"name": "perturb", "set": {"trainer.callbacks": [{"class_path": "X"}]},
                    "grid": {"trainer.callbacks.ticket": ["{main.imp_level:1}"],
                             "trainer.callbacks.mode, trainer.callbacks.sigma": [["ticket", None],
                                                                                 ["perturb_rest", 0.1]]}}]})
    out = tmp_path / "s"
    plan = make_plan(spec, ["c.yaml"], out)
    main = {f.values["model.init_args.width"]: f for f in plan.fits if f.stage == "main"}
    later = [f for f in plan.fits if f.stage == "perturb"]
    assert len(later) == 4 and {f.stage for f in plan.fits} == {"main", "perturb"}
    assert arg(main[8].args, "trainer.callbacks.bank_path") == str(out.resolve() / "bank.pt")
    for f in later:
        width = f.values["model.init_args.width"]
        assert f.deps == [main[width].name]  # the fit of the same width, not the other
        ticket = RunFolder(main[width].folder.resolve()).imp_level(1)
        assert arg(f.args, "trainer.callbacks.ticket") == str(ticket)
        assert arg(f.args, "trainer.callbacks") == "[{class_path: X}]"
        assert "--trainer.callbacks.bank_path" not in f.args  # a stage's set is its own
        assert f.args.index("--trainer.callbacks") < f.args.index("--trainer.callbacks.ticket")
    sigma = {(f.values["trainer.callbacks.mode"], f.values["trainer.callbacks.sigma"]) for f in later}
    assert sigma == {("ticket", None), ("perturb_rest", 0.1)}  # zipped keys vary together
    assert later[0].name == "perturb_width-8_ticket-main.imp_level_1_mode-ticket_sigma-null_seeds-0.1"


@pytest.mark.parametrize(("block", "message"), [
    ({"pack": "seeds"}, "has no grid"),
    ({"grid": {"a": [1]}, "pack": "some"}, "unknown pack mode"),
    ({"grid": {"a": [1]}, "colour": 1}, "unknown keys"),
    ({"grid": {"a": []}}, "has no values"),
    ({"grid": {"a": [1, 1]}}, "repeats a value"),
    ({"grid": {"a, b": [[1]]}}, "vary together"),
    ({"grid": {"model.width": [2, 4]}, "pack": "widths", "width_groups": [[2]]}, "leave out grid widths"),
    ({"grid": {"a": ["{later}"]}, "stages": [{"name": "later", "grid": {}}]}, "not an earlier stage"),
    ({"grid": {"a": [1]}, "stages": [{"name": "s", "grid": {"b": ["{main.nothing}"]}}]}, "no RunFolder path"),
    ({"grid": {"a": [1, 2]}, "stages": [{"name": "s", "drop": ["a"], "grid": {"b": ["{main}"]}}]},
     "2 of its fits"),
    ({"grid": {"a": [1]}, "stages": [{"name": "s"}, {"name": "s"}]}, "two stages"),
])
def test_bad_sweep_blocks_are_refused(tmp_path: Path, block: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_plan(parse_sweep_block(block), [], tmp_path)


# ---- the fit CLI ignores the block ---------------------------------------------------------------------
def test_fit_runs_the_base_point_of_a_study_config(tmp_path: Path) -> None:
    cfg = study(tmp_path, {"grid": {"seed_everything": [0, 1]}, "pack": "seeds"})
    run = tmp_path / "base"
    cli_main(["fit", "-c", str(cfg), "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run)])
    saved = yaml.safe_load(RunFolder(run).config_yaml.read_text())
    assert saved["sweep"]["grid"] == {"seed_everything": [0, 1]}  # kept, not used
    assert not RunFolder(run).members_csv.exists()  # the base point is a single model
    assert len([r for r in RunFolder(run).read_metrics() if r.get("train/loss")]) == 1


# ---- running tiny sweeps ----------------------------------------------------------------------------------
def test_tiny_sweep_packs_members_collects_and_skips(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = study(tmp_path, {"name": "tiny", "figure": "double-descent", "pack": "all",
                           "grid": {"model.init_args.width": [2, 4], "seed_everything": [0, 1]}})
    out = Path("dd")  # relative to the working folder
    assert sweep_main(["-c", str(cfg), "--out", str(out), "--set", "data.init_args.noise_seed=3"]) == 0
    log = capsys.readouterr().out
    assert "1 fit(s) of 4 member(s)" in log and "figure: overparam-lit plot double-descent" in log
    (fit,) = json.loads(SweepFolder(out).spec.read_text())["fits"]
    assert fit["name"] == "seeds-0.1_widths-2.4" and arg(fit["args"], "data.init_args.noise_seed") == "3"
    folder = RunFolder(fit["folder"])
    done = folder.read_done()
    assert done["attempts"] == 1 and done["seeds"] == [0, 1] and done["widths"] == [2, 4]
    # results.csv: one row per member, equal to the last rows of members.csv read independently
    rows = read_csv(SweepFolder(out).results)
    members = read_csv(folder.members_csv)
    assert len(rows) == 4
    for r in rows:
        own = [m for m in members if m["member"] == r["member"]]
        last_train = [m for m in own if m["train/loss"]][-1]
        last_test = [m for m in own if m["test/acc"]][-1]
        assert (r["seed"], r["width"]) == (own[0]["seed"], own[0]["width"])
        assert r["seed_everything"] == r["seed"] and r["model.init_args.width"] == r["width"]
        assert float(r["train/loss"]) == pytest.approx(float(last_train["train/loss"]))
        assert float(r["test/acc"]) == pytest.approx(float(last_test["test/acc"]))
        assert int(r["epoch"]) == 1 and r["status"] == "done" and r["stage"] == "main"
    assert {(int(r["width"]), int(r["seed"])) for r in rows} == {(2, 0), (2, 1), (4, 0), (4, 1)}
    fits = read_csv(SweepFolder(out).fits)
    assert [(f["fit"], f["status"], f["members"]) for f in fits] == [("seeds-0.1_widths-2.4", "done", "4")]
    # rerun: finished fits are skipped; --collect rebuilds the tables from the saved options
    stamp = folder.done_json.stat().st_mtime_ns
    assert sweep_main(["-c", str(cfg), "--out", str(out), "--set", "data.init_args.noise_seed=3"]) == 0
    assert "1 already finished, 0 to run" in capsys.readouterr().out
    assert folder.done_json.stat().st_mtime_ns == stamp
    SweepFolder(out).results.unlink()
    assert sweep_main(["--out", str(out), "--collect"]) == 0
    assert read_csv(SweepFolder(out).results) == rows
    # a dry run lists the commands and writes nothing
    assert sweep_main(["-c", str(cfg), "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "--model.init_args.widths '[2, 4]'" in text and not (tmp_path / "dry").exists()


FLAKY = '''
from pathlib import Path
import lightning as L

class CrashOnce(L.Callback):
    """Crashes the first run that finds the flag file (and removes it)."""
    def __init__(self, flag: str) -> None:
        self.flag = Path(flag)
    def on_train_start(self, trainer, pl_module) -> None:
        if self.flag.exists():
            self.flag.unlink()
            raise RuntimeError("injected crash")
'''


def test_crash_is_retried_bad_input_is_not(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    # the sweep refuses a grid the fit would refuse before its first fit
    # (tests/cli/test_commands_bad_input.py);
    # without that check, a fit that exits 2 (bad input it cannot see beforehand) is not retried
    monkeypatch.setattr(Sweep, "check_grid", lambda self, fits: None)
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "flag").write_text("")
    crash = {"class_path": "flaky.CrashOnce", "init_args": {"flag": str(tmp_path / "flag")}}
    cfg = study(tmp_path, {"grid": {"model.init_args.width": [-3, 2]}},
                trainer={**BASE["trainer"], "max_epochs": 1, "callbacks": [crash]})
    out = tmp_path / "s"
    assert sweep_main(["-c", str(cfg), "--out", str(out), "--workers", "2", "--retries", "2"]) == 1
    log = capsys.readouterr().out
    assert "FAIL width--3 (attempt 1, exit 2)" in log and "width--3, 1 member(s), attempt 2" not in log
    assert "FAIL width-2 (attempt 1, exit 1)" in log and "done width-2" in log
    folder = SweepFolder(out)
    assert json.loads(folder.failed("width--3").read_text())["exit_code"] == 2
    assert len(folder.logs_of("width--3")) == 1 and len(folder.logs_of("width-2")) == 2
    assert "injected crash" in folder.logs_of("width-2")[0].read_text()
    status = {r["fit"]: r["status"] for r in read_csv(folder.results)}
    assert status == {"width--3": "failed", "width-2": "done"}
    assert RunFolder(folder.fit_dir("width-2")).read_done()["attempts"] == 2


def test_stage_waits_for_its_ticket_and_lottery_reads_both(tmp_path: Path, capsys) -> None:
    imp = {"class_path": "overparam_lit.callbacks.imp.IterativeMagnitudePruning",
           "init_args": {"levels": 1, "fraction": 0.5}}
    ticket = {"class_path": "overparam_lit.callbacks.ticket.TicketStart"}
    controls = {"name": "controls", "set": {"trainer.callbacks": [ticket]},
                "grid": {"trainer.callbacks.ticket": ["{main.imp_level:1}"],
                         "trainer.callbacks.mode": ["random_reinit"]}}
    cfg = study(tmp_path, {"grid": {"seed_everything": [0, 1]}, "pack": "seeds", "stages": [controls]},
                trainer={**BASE["trainer"], "max_epochs": 1, "callbacks": [imp]})
    out = tmp_path / "lot"
    assert sweep_main(["-c", str(cfg), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert log.index("done seeds-0.1") < log.index("run  controls_")  # the control waited for its ticket
    main_dir = SweepFolder(out).fit_dir("seeds-0.1")
    control = next(SweepFolder(out).points.glob("controls_*"))
    result = json.loads(RunFolder(control).ticket_result.read_text())
    assert result["ticket"] == str(RunFolder(main_dir.resolve()).imp_level(1)) and len(result["members"]) == 2
    assert cli_main(["plot", "lottery", str(out)]) == 0
    numbers = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads(RunFolder(main_dir).imp_summary.read_text())
    level = summary["levels"][1]
    key = f"{round(level['density'], 4):g}"
    expect = sum(m["test/acc"] for m in level["members"]) / 2
    assert numbers["final"]["ticket"][key]["mean"] == pytest.approx(expect)
    assert numbers["final"]["random_reinit"][key]["mean"] == pytest.approx(
        sum(m["test/acc"] for m in result["members"]) / 2)
    assert numbers["final"]["random_reinit"][key]["seeds"] == 2


def test_wandb_sweep_files_and_help(tmp_path: Path, capsys) -> None:
    cfg = study(tmp_path, {"name": "ws", "grid": {"seed_everything": [0, 1]}, "pack": "seeds",
                           "stages": [{"name": "two", "grid": {"model.init_args.depth": [1, 2]}}]})
    out = tmp_path / "s"
    argv = ["-c", str(cfg), "--out", str(out), "--wandb-sweep", "--set", "trainer.max_epochs=3"]
    assert sweep_main(argv) == 0
    first = yaml.safe_load(SweepFolder(out).wandb_sweep().read_text())
    second = yaml.safe_load(SweepFolder(out).wandb_sweep("two").read_text())
    assert first["method"] == "grid" and first["parameters"] == {"fit": {"values": ["seeds-0.1"]}}
    assert second["parameters"]["fit"]["values"] == ["two_depth-1_seeds-0.1", "two_depth-2_seeds-0.1"]
    cmd = first["command"]
    assert cmd[-1] == "${args}" and cmd[cmd.index("--out") + 1] == str(out.resolve())
    assert cmd[cmd.index("--set") + 1] == "trainer.max_epochs=3" and "sweep" in cmd
    assert not SweepFolder(out).points.exists()
    for command in ("sweep", "plot", "report"):
        with pytest.raises(SystemExit) as exc:
            cli_main([command, "--help"])
        assert exc.value.code == 0 and "usage: overparam-lit " + command in capsys.readouterr().out


def test_bad_input_ends_in_one_paragraph(tmp_path: Path, capsys) -> None:
    cfg = study(tmp_path, {"grid": {"seed_everything": [0]}})
    out = ["--out", str(tmp_path / "s")]
    cases = [(["sweep", "-c", str(tmp_path / "missing.yaml"), *out], "config file not found"),
             (["sweep", "-c", str(REPO / "configs" / "quickstart.yaml"), *out], "no sweep block"),
             (["sweep", "-c", str(cfg), *out, "--set", "trainer.max_epochs"], "not KEY=VALUE"),
             (["sweep", "-c", str(cfg), *out, "--fit", "nope"], "no fit 'nope'"),
             (["plot", "nonsense", str(tmp_path)], "unknown figure"),
             (["plot", "double-descent", str(tmp_path / "none")], "not found"),
             (["plot", "hessian", str(tmp_path)], "no Hessian probes")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_submitit_runs_each_fit_as_a_job(tmp_path: Path, capsys) -> None:
    pytest.importorskip("submitit")
    cfg = study(tmp_path, {"grid": {"seed_everything": [0, 1]}, "pack": "seeds"},
                trainer={**BASE["trainer"], "max_epochs": 1})
    out = tmp_path / "s"
    assert sweep_main(["-c", str(cfg), "--out", str(out), "--executor", "slurm", "--cluster", "debug",
                       "--slurm", "timeout_min=5", "--slurm", "partition=cpu"]) == 0
    assert "submitted 1 job(s)" in capsys.readouterr().out
    folder = RunFolder(SweepFolder(out).fit_dir("seeds-0.1"))
    done = folder.read_done()
    assert done["seeds"] == [0, 1] and done["command"][3] == "fit" and "metrics" in done
    assert len(read_csv(SweepFolder(out).results)) == 2


@pytest.mark.slow
def test_sweep_survives_sigkill(tmp_path: Path) -> None:
    """Kill the sweep itself mid-run: its fits die with it; a rerun skips the finished fit and resumes
    the interrupted one from its last checkpoint, with the first fit's rows kept."""
    cfg = study(tmp_path, {"grid": {"model.init_args.width": [2, 4]}},
                trainer={**BASE["trainer"], "max_epochs": 300})
    out = tmp_path / "s"
    argv = [sys.executable, "-m", "overparam_lit", "sweep", "-c", str(cfg), "--out", str(out),
            "--workers", "1"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = RunFolder(SweepFolder(out).fit_dir("width-4")).done_json  # the larger fit runs first
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert first.exists()
    second = RunFolder(SweepFolder(out).fit_dir("width-2"))
    while not second.last_ckpt.exists() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(second.root) not in ps  # the orphaned fit was terminated
    stamp = first.stat().st_mtime_ns
    res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 already finished, 1 to run" in res.stdout and "(resuming)" in res.stdout
    assert first.stat().st_mtime_ns == stamp
    done = second.read_done()
    assert done["metrics"]["epoch"] == 299 and "--ckpt_path" in done["command"]
    rows = second.read_metrics()
    assert len([r for r in rows if r.get("model/num_params")]) == 1  # logged once, not again on resume
    # the killed fit's rows are kept and the resumed fit's follow: every epoch once
    assert [int(r["epoch"]) for r in rows if r.get("train/loss")] == list(range(300))


def test_command_line_overrides(tmp_path: Path) -> None:
    from overparam_lit.studies.sweep import Sweep, build_parser

    grid = {"model.init_args.width": [2, 4, 8], "seed_everything": [0, 1]}
    cfg = study(tmp_path, {"grid": grid, "pack": "seeds",
                           "stages": [{"name": "more", "grid": {"model.init_args.depth": [1, 2]}}]})

    def plan(*extra: str):
        return Sweep(build_parser().parse_args(["-c", str(cfg), "--out", str(tmp_path / "s"), *extra])).plan

    fits = plan("--pack", "all", "--width-groups", "one").fits
    packed = ([2, 4, 8], [0, 1])
    got = [(f.stage, f.widths, f.seeds) for f in fits]
    assert got == [("main", *packed), ("more", *packed), ("more", *packed)]
    fits = plan("--grid", "model.init_args.depth=3", "--grid", "model.init_args.width=16").fits
    assert [(f.stage, f.values) for f in fits] == [  # depth belongs to stage 'more'; width to both
        ("main", {"model.init_args.width": 16}),
        ("more", {"model.init_args.width": 16, "model.init_args.depth": 3})]
    fits = plan("--set", "trainer.max_epochs=5", "--set", "more:trainer.max_epochs=7").fits
    assert {f.stage: arg(f.args, "trainer.max_epochs") for f in fits} == {"main": "5", "more": "7"}
    with pytest.raises(ConfigError, match="stages the study does not have"):
        plan("--set", "other:trainer.max_epochs=7")

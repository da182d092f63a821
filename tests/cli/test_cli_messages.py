"""Parser errors print one line, message first, with a did-you-mean where a near name exists and the
exact fix (jsonargparse's full message with OVERPARAM_LIT_DEBUG=1); settings that would train
nothing are refused; a study config given to fit runs with a note; a ticket of another number of
members is named as such."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overparam_lit.cli import main

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--data.num_samples", "300",
          "--wandb.mode", "disabled", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1"]
PREFIX = "overparam-lit fit: error: "


def first_line(capsys, argv: list[str]) -> str:
    """Run ``main(argv)``: exit code 2, one line on stderr (no traceback); that line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.rstrip("\n")


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from an empty folder (no configs/, no my_study.py)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_unknown_option_names_the_near_one(capsys, elsewhere: Path) -> None:
    line = first_line(capsys, ["fit", *COMMON, "--model.widht", "64"])
    assert line.startswith(PREFIX + "MLP has no option 'widht'; did you mean 'width'? "
                           "Write --model.width 64.")
    assert line.endswith("(full parser message: OVERPARAM_LIT_DEBUG=1)")
    assert not (elsewhere / "runs").exists()


def test_full_parser_message_behind_the_environment_variable(capsys, elsewhere: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERPARAM_LIT_DEBUG", "1")
    with pytest.raises(SystemExit) as exc:
        main(["fit", *COMMON, "--model.widht", "64"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(PREFIX + "MLP has no option 'widht'")
    assert "Option 'widht' is not accepted" in err and "NestedArg(key='widht'" in err


def test_a_list_option_given_a_comma_list(capsys, elsewhere: Path) -> None:
    line = first_line(capsys, ["fit", *COMMON, "--model.widths", "16,64"])
    assert line.startswith(PREFIX + "MLP option 'widths' must be a list of integers (or null) (got '16,64'). "
                           "Write --model.widths '[16, 64]'.")


def test_a_fragment_without_dash_c(capsys, elsewhere: Path) -> None:
    line = first_line(capsys, ["fit", "-c", "configs/quickstart.yaml", "callbacks/imp.yaml"])
    assert line.startswith(PREFIX + "unrecognized argument callbacks/imp.yaml: a config or fragment file is "
                           "given with -c. Write -c callbacks/imp.yaml.")


def test_a_callback_option_without_its_fragment(capsys, elsewhere: Path) -> None:
    line = first_line(capsys, ["fit", *COMMON, "--trainer.callbacks.levels", "5"])
    assert line.startswith(PREFIX + "--trainer.callbacks.levels edits a callback, but no callback is "
                           "configured; levels is an option of IterativeMagnitudePruning "
                           "(callbacks/imp.yaml). Add its fragment before the option: -c callbacks/imp.yaml "
                           "--trainer.callbacks.levels 5.")


def test_a_config_file_name_with_a_typo(capsys, elsewhere: Path) -> None:
    line = first_line(capsys, ["fit", "-c", "configs/quickstrat.yaml"])
    assert line.startswith(PREFIX + "config file configs/quickstrat.yaml not found; did you mean "
                           "configs/quickstart.yaml? Write -c configs/quickstart.yaml.")
    line = first_line(capsys, ["fit", "-c", "nowhere/xyz.yaml"])
    assert line.startswith(PREFIX + "config file nowhere/xyz.yaml not found. Packaged configs")
    assert "quickstart" in line and "imp" in line


def test_a_study_module_that_is_not_importable_from_here(capsys, elsewhere: Path) -> None:
    study = elsewhere.parent / "study"
    study.mkdir()
    (study / "elsewhere_study.py").write_text("from overparam_lit.models import MLP\n\n\nclass ResMLP(MLP):\n"
                                       "    pass\n")
    line = first_line(capsys, ["fit", "--model", "elsewhere_study.ResMLP", "--data", "MNIST1D",
                               "--wandb.mode", "disabled"])
    assert line.startswith(PREFIX + "cannot import 'elsewhere_study.ResMLP': No module named "
                           "'elsewhere_study'. Run from the folder that holds elsewhere_study.py, or add "
                           "that folder to PYTHONPATH")


@pytest.mark.parametrize("args,start", [
    (["--model", "MLPP"], "no model class 'MLPP'; did you mean 'MLP'? Write --model MLP."),
    (["--data.batchsize", "3"], "MNIST1D has no option 'batchsize'; did you mean 'batch_size'? "
                                "Write --data.batch_size 3."),
    (["--trainer.max_epochz", "3"], "unrecognized option --trainer.max_epochz; did you mean "
                                    "--trainer.max_epochs? Write --trainer.max_epochs 3."),
    (["--trainer.max_epochs", "abc"], "--trainer.max_epochs must be an integer (or null) (got 'abc')."),
    (["--model.optimizer", "Adamm"], "no model.optimizer class 'Adamm'; did you mean 'Adam'?"),
    (["--model.optimizer", "Adam", "--model.optimizer.init_args.lrr", "1"],
     "Adam has no option 'lrr'; did you mean 'lr'? Write --model.optimizer.init_args.lr 1."),
    (["--model.optimizer.init_args.lr", "0.1"], "--model.optimizer.init_args.lr sets an option of the "
                                                "optimizer, but no optimizer class is chosen."),
    (["--trainer.callbacks", "HessianProb"], "no trainer.callbacks class 'HessianProb'; did you mean "
                                             "'HessianProbe'?"),
])
def test_more_parser_errors(capsys, elsewhere: Path, args: list[str], start: str) -> None:
    assert first_line(capsys, ["fit", *COMMON, *args]).startswith(PREFIX + start)


@pytest.mark.parametrize("args,start", [
    (["-c", str(REPO / "configs" / "quickstart.yaml"), "--model.optimizer.init_args.lr", "0"],
     "the learning rate must be > 0"),
    (["--trainer.max_epochs", "0"], "trainer.max_epochs 0 would train nothing (got 0). Set "
                                    "--trainer.max_epochs to 1 or more"),
    (["--trainer.max_steps", "0"], "trainer.max_steps 0 would train nothing"),
])
def test_settings_that_train_nothing_are_refused(capsys, tmp_path: Path, args: list[str], start: str) -> None:
    run = tmp_path / "run"
    line = first_line(capsys, ["fit", *COMMON, *args, "--trainer.default_root_dir", str(run)])
    assert line.startswith("overparam-lit: error: " + start)
    assert not run.exists()


def test_a_study_config_given_to_fit_runs_with_a_note(capsys, tmp_path: Path) -> None:
    study = REPO / "configs" / "study_mnist1d_double_descent.yaml"
    run = tmp_path / "run"
    main(["fit", "-c", str(study), "--trainer.max_epochs", "1", "--data.num_samples", "300",
          "--wandb.mode", "disabled", "--trainer.default_root_dir", str(run)])
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if "note:" in line]
    assert note == [f"overparam-lit fit: note: the sweep: block of {study} was ignored; this fit runs the "
                    f"config's base point only. `overparam-lit sweep -c {study} --out DIR` runs the study."]
    assert (run / "metrics.csv").is_file()


def test_a_ticket_of_another_number_of_members(capsys, tmp_path: Path) -> None:
    src = tmp_path / "imp"
    main(["fit", *COMMON, "--model.seeds", "2", "-c", str(REPO / "callbacks" / "imp.yaml"),
          "--trainer.callbacks.levels", "1", "--trainer.default_root_dir", str(src)])
    capsys.readouterr()
    ticket = ["-c", str(REPO / "callbacks" / "ticket.yaml"), "--trainer.callbacks.ticket",
              str(src / "imp" / "level_01")]
    for members, said in ((["--model.seeds", "3"], "the ticket holds 2 members and this fit has 3"),
                          ([], "the ticket holds 2 members and this fit is a single model")):
        with pytest.raises(SystemExit) as exc:
            main(["fit", *COMMON, *members, *ticket, "--trainer.default_root_dir", str(tmp_path / "t")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"overparam-lit: error: {said}" in err, err
        assert "model class and width" not in err and "--model.seeds/--model.widths" in err
    assert os.environ.get("OVERPARAM_LIT_DEBUG") is None


def test_plot_option_that_is_not_key_value(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plot", "-o", "threshold", "double-descent", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(
        "overparam-lit plot: error: a figure option (-o) is not KEY=VALUE (got 'threshold'). "
        "Write e.g. -o threshold=0.005")
    assert "--set" not in err and not (tmp_path / "figures").exists()


def test_a_misspelt_option_in_a_config_file(capsys, tmp_path: Path) -> None:
    text = (REPO / "configs" / "quickstart.yaml").read_text().replace("width: 256", "widht: 256")
    (tmp_path / "bad.yaml").write_text(text)
    line = first_line(capsys, ["fit", "-c", str(tmp_path / "bad.yaml")])
    assert line.startswith(PREFIX + "MLP has no option 'widht'; did you mean 'width'? Rename widht to width "
                           "under model: init_args: in the config file (width: 256).")

"""The study registry: the built-in studies' declarations, and a study of one's own, written
outside the package, that the run folder, the CLI's resume checks and the module find."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pytest

from overparam_lit import registry
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import ConfigError

COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--seed_everything", "0",
          "--data.num_samples", "400", "--data.batch_size", "80", "--wandb.mode", "disabled",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

TOY = '''
"""A user's own study: a callback that writes toy/epoch%03d.json, declared for the registry."""
import lightning as L

from overparam_lit.registry import Study, register
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_write_json

LOADED = []


def load_checkpoint(module, checkpoint):
    LOADED.append(int(checkpoint["epoch"]))
    return False  # the network keeps its shapes


class ToyProbe(L.Callback):
    """Records the optimizer step at the end of every training epoch."""

    def __init__(self, scale: int = 1):
        self.scale, self.steps = scale, []

    def on_train_epoch_end(self, trainer, pl_module):
        self.steps.append(trainer.global_step * self.scale)
        folder = RunFolder.of(trainer)
        atomic_write_json({"steps": self.steps}, folder.toy_epoch(trainer.current_epoch))
        atomic_write_json({"epochs": len(folder.toy_epochs())}, folder.toy_json)

    def state_dict(self):
        return {"steps": list(self.steps)}

    def load_state_dict(self, state):
        self.steps = list(state["steps"])


TOY = register(Study(
    "toy",
    callback="toy_study.ToyProbe",
    artifacts={"toy": "toy/", "toy_json": "toy/toy.json", "toy_epoch": "toy/epoch{:03d}.json",
               "toy_epochs": "toy/epoch*.json"},
    changes_model=True,
    load_checkpoint="toy_study.load_checkpoint",
))
'''


@pytest.fixture()
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``toy_study.py`` in the working folder, as a user writes it; unregistered afterwards."""
    (tmp_path / "toy_study.py").write_text(TOY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_study", None)
    yield tmp_path
    registry._STUDIES.pop("toy", None)
    sys.modules.pop("toy_study", None)


def fit(run: Path, *extra: str) -> None:
    from overparam_lit.cli import main

    main(["fit", *COMMON, "--trainer.default_root_dir", str(run), *extra])


def test_builtin_studies_declare_what_the_house_used_to_name() -> None:
    names = [s.name for s in registry.studies()]
    assert names[:6] == ["imp", "ticket", "hessian", "regions", "widen", "members"]
    assert sorted(registry.model_changing()) == ["IterativeMagnitudePruning", "TicketStart", "Widen"]
    assert registry.for_callback("HessianProbe{'every': 1}").name == "hessian"
    assert registry.for_callback("ModelCheckpoint") is None
    from overparam_lit.studies.figures import FIGURES

    for study in registry.studies():
        for path in (*study.callbacks, study.options, study.reader, study.load_checkpoint, study.attach):
            if path is not None:
                assert callable(registry.load(path)), path
        assert set(study.figures) <= set(FIGURES), study.name
        if study.fragment is not None:
            fragment = Path(registry.load("overparam_lit.cli.config_files.FRAGMENTS")) / "callbacks"
            assert (fragment / f"{study.fragment}.yaml").is_file()
    options = [s.options for s in registry.studies() if s.options]
    assert all(dataclasses.is_dataclass(registry.load(o)) for o in options)


def test_run_folder_names_the_studies_files(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    assert folder.imp_mask(3) == tmp_path / "imp" / "level_03" / "mask.pt"
    assert folder.imp_rewind(12) == tmp_path / "imp" / "level_12" / "rewind.pt"
    assert folder.imp_summary == tmp_path / "imp" / "summary.json"
    assert folder.ticket_result == tmp_path / "imp" / "ticket_result.json"
    assert folder.hessian_probe(120) == tmp_path / "hessian" / "probe_step00000120.npz"
    assert folder.regions_maps(7) == tmp_path / "regions" / "maps_epoch0007.npz"
    assert folder.regions_filmstrip_gif == tmp_path / "regions" / "filmstrip.gif"
    assert folder.widen_json == tmp_path / "widen" / "widen.json"
    assert folder.imp_levels() == []
    for level in (2, 0, 10):
        folder.imp_level(level).mkdir(parents=True)
    (folder.imp / "level_99").write_text("a file, not a level folder")
    assert folder.imp_levels() == [folder.imp_level(0), folder.imp_level(2), folder.imp_level(10)]
    assert hasattr(RunFolder, "imp_level") and not hasattr(RunFolder, "imp_nothing")
    assert "hessian_probe" in dir(folder)
    with pytest.raises(AttributeError, match="imp_nothing"):
        _ = folder.imp_nothing
    assert RunFolder.run_artifacts() == ("config.yaml", "metrics.csv", "members.csv", "hparams.yaml",
                                         "checkpoints", "imp", "hessian", "regions", "widen", "wandb",
                                         "done.json")


def test_a_study_may_not_take_another_studys_names() -> None:
    with pytest.raises(ConfigError, match="names artifacts that study 'imp' names"):
        registry.register(registry.Study("mine", callback="x.Y", artifacts={"imp_mask": "mine/m.pt"}))
    with pytest.raises(ConfigError, match="the run folder's own"):
        registry.register(registry.Study("mine", callback="x.Y", artifacts={"last_ckpt": "mine/l.ckpt"}))
    with pytest.raises(ConfigError, match="the run folder's own"):
        registry.register(registry.Study("mine", callback="x.Y", artifacts={"mine": "checkpoints/x"}))
    with pytest.raises(ConfigError, match="relative to the run folder"):
        registry.Study("mine", callback="x.Y", artifacts={"mine": "/abs/x"})
    assert "mine" not in [s.name for s in registry.studies()]


def test_a_study_from_outside_the_package_plugs_in(toy: Path) -> None:
    run = toy / "run"
    fit(run, "--trainer.max_epochs", "3", "--trainer.callbacks+=toy_study.ToyProbe")
    folder = RunFolder(run)
    # the run folder names its files: 4 steps an epoch (320 training examples)
    assert json.loads(folder.toy_epoch(2).read_text()) == {"steps": [4, 8, 12]}
    assert json.loads(folder.toy_json.read_text()) == {"epochs": 3}
    assert folder.toy_epochs() == [folder.toy_epoch(e) for e in range(3)]
    assert "toy" in RunFolder.run_artifacts() and folder.toy in folder.existing_artifacts()
    assert registry.for_callback("ToyProbe").name == "toy"

    # it changes the model: resuming without it is refused, naming it
    with pytest.raises(SystemExit) as exit_:
        fit(run, "--trainer.max_epochs", "4", "--ckpt_path", str(folder.last_ckpt))
    assert exit_.value.code == 2

    # resumed with it, the module calls its checkpoint hook before the weights load
    toy_study = importlib.import_module("toy_study")
    fit(run, "--trainer.max_epochs", "4", "--trainer.callbacks+=toy_study.ToyProbe",
        "--ckpt_path", str(folder.last_ckpt))
    assert len(toy_study.LOADED) == 1  # once, for the resumed checkpoint
    assert json.loads(folder.toy_epoch(3).read_text()) == {"steps": [4, 8, 12, 16]}

    # --overwrite clears its folder with the rest of the run
    fit(run, "--trainer.max_epochs", "1", "--overwrite", "true")
    assert not folder.toy.exists() and folder.last_ckpt.is_file()


def test_resume_without_the_toy_study_says_what_to_add(toy: Path, capsys: pytest.CaptureFixture) -> None:
    run = toy / "run"
    fit(run, "--trainer.max_epochs", "1", "--trainer.callbacks+=toy_study.ToyProbe")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        fit(run, "--trainer.max_epochs", "2", "--ckpt_path", str(RunFolder(run).last_ckpt))
    err = capsys.readouterr().err
    assert "written by a fit with ToyProbe, which is not configured now" in err
    assert "-c <run>/config.yaml" in err

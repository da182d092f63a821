"""Bad input outside the CLI's own checks: unreadable artifacts, sizes that cannot fit, schedules
that prune everything and losses that diverge end in one clear paragraph (ConfigError), before
training or at the step where they happen."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from overparam_lit.callbacks.hessian import HessianProbe
from overparam_lit.callbacks.imp import IterativeMagnitudePruning
from overparam_lit.callbacks.regions import DecisionRegions
from overparam_lit.callbacks.ticket import TicketStart
from overparam_lit.data import CIFAR10, MNIST1D
from overparam_lit.models import MLP
from overparam_lit.pruning import load_ticket
from overparam_lit.regions import PlaneBank
from overparam_lit.stopping import TrainingDiverged
from overparam_lit.utils import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _fit(root: Path, model: MLP, callbacks: list, epochs: int = 1, **data) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(default_root_dir=str(root), max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(model, MNIST1D(batch_size=50, train_subset=200, **data))
    return trainer


@pytest.fixture(scope="module")
def ticket(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imp")
    _fit(root, MLP(width=8, input_shape=(1, 40)), [IterativeMagnitudePruning(levels=1, epochs_per_level=1)])
    return root / "imp" / "level_01"


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "folder", "missing", "not_tensors"])
@pytest.mark.parametrize("name", ["mask.pt", "rewind.pt"])
def test_damaged_ticket_files_are_named(tmp_path, ticket, damage, name):
    copy = tmp_path / "level"
    copy.mkdir()
    for f in ("mask.pt", "rewind.pt"):
        (copy / f).write_bytes((ticket / f).read_bytes())
    target = copy / name
    if damage == "empty":
        target.write_bytes(b"")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"not a torch file at all" * 10)
    elif damage == "folder":
        target.unlink()
        target.mkdir()
    elif damage == "missing":
        target.unlink()
    else:
        torch.save([1, 2, 3], target)
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")) as err:
        load_ticket(copy)
    assert "\n" not in str(err.value) and str(copy) in str(err.value)
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        _fit(tmp_path / "run", MLP(width=8, input_shape=(1, 40)), [TicketStart(ticket=str(copy))])


def test_damaged_ticket_through_the_cli_exits_2(tmp_path, ticket):
    broken = tmp_path / "level"
    broken.mkdir()
    (broken / "mask.pt").write_bytes(b"")
    (broken / "rewind.pt").write_bytes((ticket / "rewind.pt").read_bytes())
    res = subprocess.run(
        [sys.executable, "-m", "overparam_lit", "fit", "--model", "MLP", "--model.width", "8", "--data",
         "MNIST1D", "--trainer.max_epochs", "1", "--wandb.mode", "disabled", "-c", "callbacks/ticket.yaml",
         "--trainer.callbacks.ticket", str(broken), "--trainer.default_root_dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "mask.pt" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("damage", ["empty", "garbage", "wrong_content"])
def test_damaged_plane_bank_is_named(tmp_path, damage):
    bank = tmp_path / "bank.pt"
    if damage == "empty":
        bank.write_bytes(b"")
    elif damage == "garbage":
        bank.write_bytes(b"\x00\x01garbage" * 50)
    else:
        torch.save({"origin": torch.zeros(1)}, bank)
    with pytest.raises(ConfigError, match="plane bank"):
        PlaneBank.load(bank)
    with pytest.raises(ConfigError, match="plane bank"):
        _fit(tmp_path / "run", MLP(width=8, input_shape=(1, 40)), [DecisionRegions(bank_path=str(bank))])


def test_corrupt_cifar_pickle_is_named(cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"garbage, not a pickle")
    with pytest.raises(ConfigError, match="could not be read") as err:
        CIFAR10(root=str(root)).setup()
    assert "cifar-10-batches-py" in str(err.value) and "\n" not in str(err.value)
    with open(root / "cifar-10-batches-py" / "data_batch_2", "wb") as fh:
        pickle.dump({"wrong": 1}, fh, protocol=2)
    with pytest.raises(ConfigError, match="could not be read"):
        CIFAR10(root=str(root)).setup()


def test_sizes_that_cannot_fit_are_refused_before_allocating():
    with pytest.raises(ConfigError, match="does not fit in memory"):
        MLP(width=10**12, input_shape=(1, 40))
    with pytest.raises(ConfigError, match="resolution"):
        DecisionRegions(resolution=100_000)


@pytest.mark.parametrize(("kw", "match"), [
    ({"schedule": "list", "densities": [0.5, 0.0]}, "must lie in"),
    ({"schedule": "list", "densities": [0.5, 0.6]}, "must not increase"),
    ({"schedule": "linear", "final_density": 0.0}, "final_density"),
    ({"schedule": "cubic"}, "unknown sparsity schedule"),
])
def test_schedules_reaching_zero_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        IterativeMagnitudePruning(levels=2, **kw)


def test_schedule_keeping_no_weight_is_refused_before_training(tmp_path):
    cb = IterativeMagnitudePruning(levels=30, fraction=0.5, epochs_per_level=1, scope="layerwise")
    with pytest.raises(ConfigError, match="keeps no weight at level 30"):
        _fit(tmp_path, MLP(width=4, input_shape=(1, 40)), [cb])


def test_lanczos_hint_is_consistent():
    with pytest.raises(ConfigError) as err:
        HessianProbe(k=100_000, lanczos_iters=100)
    assert "at least 2k = 200000" in str(err.value) and "lanczos_iters >= 200000" in str(err.value)


def _explode(params):
    return torch.optim.SGD(params, lr=1e6)


def test_diverging_loss_stops_with_the_step(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"NaN or infinite at step \d+") as err:
        _fit(tmp_path, MLP(width=8, input_shape=(1, 40), optimizer=_explode), [], epochs=3)
    assert not isinstance(err.value, ConfigError)  # a training outcome, not bad input


def test_one_diverged_member_leaves_the_others_training(tmp_path):
    def lrs(params):
        return torch.optim.SGD(params, lr=1e-2)

    model = MLP(width=8, input_shape=(1, 40), seeds=[0, 1], optimizer=lrs)
    with torch.no_grad():  # member 1 starts with huge weights: its loss overflows at once
        model.net.stacked_params()["1.weight"][1].fill_(1e38)
    with pytest.warns(UserWarning, match=r"members \[1\] diverged"):
        _fit(tmp_path, model, [], epochs=2)
    assert torch.isfinite(model.net.stacked_params()["1.weight"][0]).all()
    logged = model.trainer.logged_metrics
    assert float(logged["members/diverged"]) == 1.0 and torch.isfinite(logged["train/loss"])

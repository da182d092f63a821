"""Several optimizer steps per Lightning step (``steps_per_call``) train exactly as one: the same
parameters (bit for bit: the same kernels run in the same order), the same epoch metrics and
rows, and every step-scheduled event on its step."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from overparam_lit.callbacks import HessianProbe, IterativeMagnitudePruning, Widen
from overparam_lit.cli import main
from overparam_lit.models import CNN, MLP
from overparam_lit.models.steps import AUTO_STEPS, StepAwareCallback, plan_calls
from overparam_lit.testing import Blobs, tiny_trainer
from overparam_lit.utils import ConfigError


class StepLog(L.Callback):
    """Records (global step, parameter checksum) at every Lightning batch end and at epoch ends:
    an event on a step sees exactly the weights of that step."""

    def __init__(self) -> None:
        self.ends: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ends.append((trainer.global_step, float(sum(p.double().sum() for p in pl_module.parameters()))))


def fit(root: Path, k: int | str, model: Any = None, data: Any = None, callbacks: tuple = (),
        **trainer: Any) -> tuple[L.LightningModule, L.Trainer]:
    L.seed_everything(0, verbose=False)
    model = (model or partial(MLP, width=16, depth=2, input_shape=(8,), num_classes=4))(steps_per_call=k)
    trainer = tiny_trainer(root, list(callbacks), **{"max_epochs": 3, **trainer})
    trainer.fit(model, data or Blobs(batch_size=20))
    return model, trainer


def assert_same(a: L.LightningModule, b: L.LightningModule) -> None:
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name  # exact: identical kernels in identical order


def test_plan_calls_end_on_every_event_and_max_steps() -> None:
    events = {5, 6, 17}
    nxt = lambda s: min((e for e in events if e > s), default=None)  # noqa: E731
    assert plan_calls(0, 20, 8, nxt) == [5, 1, 8, 3, 3]
    assert plan_calls(0, 20, 8, lambda s: None, max_steps=10) == [8, 2, 8, 2]
    assert plan_calls(40, 10, 32, lambda s: None) == [10]
    assert sum(plan_calls(3, 37, 4, nxt)) == 37


@pytest.mark.parametrize("opt", ["adam", "sgd_schedule_clip"])
def test_single_model_equals_one_step_per_call(tmp_path: Path, opt: str) -> None:
    kwargs: dict[str, Any] = {}
    trainer_kw: dict[str, Any] = {}
    if opt == "sgd_schedule_clip":
        kwargs = {"optimizer": partial(torch.optim.SGD, lr=0.2, momentum=0.9),
                  "lr_scheduler": partial(torch.optim.lr_scheduler.StepLR, step_size=3, gamma=0.7),
                  "lr_scheduler_interval": "step"}
        trainer_kw = {"gradient_clip_val": 0.3}
    model = partial(MLP, width=16, depth=2, input_shape=(8,), num_classes=4, **kwargs)
    a, ta = fit(tmp_path / "a", 1, model, **trainer_kw)
    b, tb = fit(tmp_path / "b", "auto", model, **trainer_kw)
    assert (a.step_calls, b.step_calls) == (1, AUTO_STEPS)
    assert ta.global_step == tb.global_step == 30
    assert_same(a, b)
    assert ta.callback_metrics.keys() == tb.callback_metrics.keys()
    for key, value in ta.callback_metrics.items():
        assert torch.equal(value, tb.callback_metrics[key]), key


def test_members_and_batchnorm_cnn_equal_one_step_per_call(tmp_path: Path) -> None:
    members = partial(MLP, width=16, depth=2, input_shape=(8,), num_classes=4, widths=[8, 16], seeds=2)
    a, _ = fit(tmp_path / "a", 1, members)
    b, _ = fit(tmp_path / "b", 5, members)
    assert b.step_calls == 5
    assert_same(a, b)
    cnn = partial(CNN, width=2, input_shape=(1, 8), num_classes=4)
    data = partial(Blobs, input_shape=(1, 8), batch_size=40)
    a, _ = fit(tmp_path / "c", 1, cnn, data(), max_epochs=2)
    b, _ = fit(tmp_path / "d", "auto", cnn, data(), max_epochs=2)
    assert_same(a, b)  # BatchNorm running statistics included


def test_imp_masks_and_rewind_step_equal_one_step_per_call(tmp_path: Path) -> None:
    def imp() -> IterativeMagnitudePruning:
        return IterativeMagnitudePruning(levels=2, epochs_per_level=2, rewind="weights", rewind_step=7)

    a, ta = fit(tmp_path / "a", 1, callbacks=(imp(),))
    cb = imp()
    b, tb = fit(tmp_path / "b", "auto", callbacks=(cb,))
    assert b.step_calls == AUTO_STEPS
    assert ta.global_step == tb.global_step
    assert_same(a, b)
    assert cb.masks is not None and any(bool((m == 0).any()) for m in cb.masks.values())


@pytest.mark.parametrize("schedule", ["steps", "log_steps"])
def test_probes_and_max_steps_land_on_their_steps(tmp_path: Path, schedule: str) -> None:
    runs = {}
    for k in (1, "auto"):
        cbs = (HessianProbe(schedule=schedule, every=7, num_probes=5, k=1, lanczos_iters=4, slq_runs=1,
                            slq_iters=4, probe_size=20, save_figure=False, bottom_iters=4), StepLog())
        model, trainer = fit(tmp_path / str(k), k, callbacks=cbs, max_steps=23, max_epochs=-1)
        runs[k] = (model, trainer, cbs)
    (a, ta, ca), (b, tb, cb) = runs[1], runs["auto"]
    assert b.step_calls == AUTO_STEPS
    assert ta.global_step == tb.global_step == 23
    assert ca[0].probed_steps == cb[0].probed_steps
    if schedule == "steps":
        assert cb[0].probed_steps == [0, 7, 14, 21]
    else:
        assert len(cb[0].probed_steps) >= 4 and cb[0].probed_steps[-1] == 23
    for h1, h2 in zip(ca[0].history, cb[0].history, strict=True):
        assert h1["hessian/lambda_max"] == h2["hessian/lambda_max"]  # the same weights at the step
    assert ca[1].ends == cb[1].ends
    assert_same(a, b)


def test_widen_at_a_step_equals_one_step_per_call(tmp_path: Path) -> None:
    from overparam_lit.data import TeacherStudent

    def data() -> TeacherStudent:
        return TeacherStudent(input_dim=4, teacher_width=3, n_train=64, n_test=32, batch_size=16)

    model = partial(MLP, width=3, depth=1)
    out = {}
    for k in (1, "auto"):
        L.seed_everything(0, verbose=False)
        dm = data()
        m = model(input_shape=dm.input_shape, num_classes=dm.num_classes, task=dm.task, steps_per_call=k)
        cb = Widen(step=6, units=2, probe_around=False)
        t = tiny_trainer(tmp_path / str(k), [cb], max_epochs=3)
        t.fit(m, dm)
        out[k] = (m, cb)
    assert out["auto"][0].step_calls == AUTO_STEPS
    assert out[1][1].record["step"] == out["auto"][1].record["step"] == 6
    assert_same(out[1][0], out["auto"][0])


class ValLog(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


@pytest.mark.parametrize("interval", [{"val_check_interval": 3}, {"val_check_interval": 0.3},
                                      {"val_check_interval": 4, "check_val_every_n_epoch": None},
                                      {"check_val_every_n_epoch": 2}])
def test_validation_lands_on_its_steps(tmp_path: Path, interval: dict[str, Any]) -> None:
    out = {}
    for k in (1, "auto"):
        log = ValLog()
        model, trainer = fit(tmp_path / str(k), k, callbacks=(log,), max_epochs=4, **interval)
        out[k] = (model, log.steps, {key: float(v) for key, v in trainer.callback_metrics.items()})
    assert out["auto"][0].step_calls == AUTO_STEPS
    assert out[1][1] == out["auto"][1] and len(out[1][1]) >= 2, (out[1][1], out["auto"][1])
    assert out[1][2] == out["auto"][2]
    assert_same(out[1][0], out["auto"][0])


class EveryStep(L.Callback):
    """A third-party callback acting at every step without declaring its steps."""

    def on_train_batch_end(self, *args: Any) -> None:
        pass


class Declared(StepAwareCallback):
    def on_train_batch_end(self, *args: Any) -> None:
        pass


def test_auto_keeps_one_step_where_several_would_not_be_exact(tmp_path: Path) -> None:
    m, _ = fit(tmp_path / "a", "auto", callbacks=(EveryStep(),), max_epochs=1)
    assert m.step_calls == 1 and "EveryStep" in m.step_calls_reason
    m, _ = fit(tmp_path / "b", "auto", callbacks=(Declared(),), max_epochs=1)
    assert m.step_calls == AUTO_STEPS
    m, t = fit(tmp_path / "f", "auto", fast_dev_run=True)  # one batch, counted as an int limit
    assert m.step_calls == 1 and t.global_step == 1
    m, t = fit(tmp_path / "g", "auto", limit_train_batches=3, max_epochs=1)
    assert m.step_calls == 1 and t.global_step == 3
    m, _ = fit(tmp_path / "c", "auto", accumulate_grad_batches=2, max_epochs=1)
    assert m.step_calls == 1 and "accumulate_grad_batches" in m.step_calls_reason


@pytest.mark.parametrize(("trainer_kw", "callbacks", "words"), [
    ({"accumulate_grad_batches": 2}, (), "accumulate_grad_batches=2"),
    ({"val_check_interval": "00:00:00:01"}, (), "time-based val_check_interval"),
    ({}, (EveryStep(),), "EveryStep"),
])
def test_explicit_steps_per_call_that_would_not_be_exact_is_refused(tmp_path: Path, trainer_kw, callbacks,
                                                                    words: str) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        fit(tmp_path, 4, callbacks=callbacks, max_epochs=1, **trainer_kw)
    assert "--model.steps_per_call 1" in str(err.value)


@pytest.mark.parametrize("bad", [0, -2, "fast", 1.5, True])
def test_bad_steps_per_call_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="steps_per_call"):
        MLP(width=4, input_shape=(8,), num_classes=4, steps_per_call=bad)


COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--seed_everything", "0",
          "--data.num_samples", "500", "--wandb.mode", "disabled", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false"]


def rows(run: Path, name: str = "metrics.csv") -> list[dict[str, str]]:
    with open(run / name, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_rows_and_resume_across_steps_per_call(tmp_path: Path) -> None:
    """The same metrics.csv and members.csv rows; a checkpoint of one setting resumes under the
    other and gives the uninterrupted run's rows and weights."""
    members = ["--model.seeds", "2"]
    main(["fit", *COMMON, *members, "--trainer.max_epochs", "4", "--model.steps_per_call", "1",
          "--trainer.default_root_dir", str(tmp_path / "one")])
    main(["fit", *COMMON, *members, "--trainer.max_epochs", "4", "--trainer.default_root_dir",
          str(tmp_path / "auto")])
    assert rows(tmp_path / "one") == rows(tmp_path / "auto")
    assert rows(tmp_path / "one", "members.csv") == rows(tmp_path / "auto", "members.csv")
    # two epochs with several steps per call, then two more with one
    run = tmp_path / "mixed"
    main(["fit", *COMMON, *members, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run)])
    main(["fit", *COMMON, *members, "--trainer.max_epochs", "4", "--model.steps_per_call", "1",
          "--trainer.default_root_dir", str(run), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    ref = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == ref["global_step"]
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    train = lambda rs: [r for r in rs if r.get("train/loss")]  # noqa: E731
    assert train(rows(run)) == train(rows(tmp_path / "one"))


@pytest.mark.ddp
def test_ddp_equals_one_step_per_call(tmp_path: Path, run_ddp) -> None:
    """Two processes: every rank holds the weights of the one-step-per-call fit, bit for bit."""
    run_ddp("steps_ddp.py", tmp_path, "1", timeout=240)
    run_ddp("steps_ddp.py", tmp_path, "auto", timeout=240)
    ref = torch.load(tmp_path / "1-rank0.pt", weights_only=True)
    assert ref["step_calls"] == 1 and ref["global_step"] == 8  # 100 samples per rank, batch 25
    for rank in (0, 1):
        got = torch.load(tmp_path / f"auto-rank{rank}.pt", weights_only=True)
        assert got["step_calls"] == AUTO_STEPS and got["global_step"] == ref["global_step"]
        for key, value in ref["state"].items():
            assert torch.equal(value, got["state"][key]), (rank, key)
        assert got["metrics"] == ref["metrics"]


def test_other_training_data_keeps_one_step_per_call(tmp_path: Path) -> None:
    """A plain DataLoader (or a data module whose loader is one) cannot be cut into calls: every
    batch is still trained, one step per Lightning step."""
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 8, generator=gen), torch.randint(0, 4, (60,), generator=gen)
    loader = DataLoader(TensorDataset(x, y, y), batch_size=20)
    L.seed_everything(0, verbose=False)
    model = MLP(width=16, depth=2, input_shape=(8,), num_classes=4)
    trainer = tiny_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, loader)
    assert model.step_calls == 1 and "not an overparam-lit data module" in model.step_calls_reason
    assert trainer.global_step == 6
    with pytest.raises(ConfigError, match="not an overparam-lit data module"):
        tiny_trainer(tmp_path / "b", max_epochs=1).fit(
            MLP(width=16, depth=2, input_shape=(8,), num_classes=4, steps_per_call=4), loader)


class OwnLoader(Blobs):
    def train_dataloader(self) -> Any:
        from torch.utils.data import DataLoader, TensorDataset

        self.setup()
        return DataLoader(TensorDataset(*self.splits["train"]), batch_size=self.batch_size)


def test_a_data_module_with_its_own_loader_keeps_one_step_per_call(tmp_path: Path) -> None:
    model, trainer = fit(tmp_path, "auto", data=OwnLoader(batch_size=20), max_epochs=2)
    assert model.step_calls == 1 and "DataLoader" in model.step_calls_reason
    assert trainer.global_step == 20  # 200 samples / 20, two epochs: every batch trained

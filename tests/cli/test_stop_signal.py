"""A fit that receives SIGTERM, SIGUSR1 or SIGUSR2 stops at the next optimizer step (also inside a
call of several steps, a Hessian probe, a region snapshot or an IMP level change), exits with code
75, leaves its folder as a resume expects it, and resumes to exactly the rows, weights and
artifacts of an uninterrupted fit.

The signals are real (``os.kill`` of this process), sent by a test callback at a chosen moment:
the n-th optimizer step, the first Hessian-vector product or region-map batch after a step, or
just before a named file lands (``os.replace``).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from overparam_lit import stopping
from overparam_lit.cli import main
from overparam_lit.runfolder import RunFolder

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 4
COMMON = ["--model", "MLP", "--data", "MNIST1D", "--model.width", "8", "--seed_everything", "0",
          "--data.num_samples", "1000", "--data.batch_size", "50", "--trainer.max_epochs", str(EPOCHS),
          "--wandb.mode", "disabled", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false"]  # 16 steps an epoch

HOOKS = '''
import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Sends this process ``signum`` (``times`` times): after optimizer step ``opt_step``, at the
    first Hessian-vector product or region-map batch once ``after_step`` steps are done
    (``where`` = hvp / regions), or just before the ``n``-th write of a file named ``file`` lands."""

    def __init__(self, signum: int = 15, opt_step: int | None = None, where: str | None = None,
                 after_step: int = 0, file: str | None = None, n: int = 1, times: int = 1,
                 rank: int | None = None):
        self.signum, self.opt_step, self.where, self.after_step = signum, opt_step, where, after_step
        self.file, self.n, self.times, self.rank = file, n, times, rank
        self.sent_at, self.calls_after = None, 0
        self._undo = []

    def _send(self, trainer):
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if self.sent_at is None:
            self.sent_at = trainer.global_step
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
        else:
            self.calls_after += 1

    def _patch(self, owner, name, wrap):
        original = getattr(owner, name)
        setattr(owner, name, wrap(original))
        self._undo.append((owner, name, original))

    def setup(self, trainer, pl_module, stage):
        type(self).last = self
        if self.where == "hvp":
            from overparam_lit.curvature.hvp import HessianOperator

            def wrap(f):
                def matvec(op, v):
                    if trainer.global_step >= self.after_step:
                        self._send(trainer)
                    return f(op, v)
                return matvec
            self._patch(HessianOperator, "matvec", wrap)
            self._patch(HessianOperator, "__call__", wrap)
        if self.where == "regions":
            import overparam_lit.regions.maps as maps

            def wrap(f):
                def evaluate(*args, **kwargs):
                    if trainer.global_step >= self.after_step:
                        self._send(trainer)
                    return f(*args, **kwargs)
                return evaluate
            self._patch(maps, "_evaluate", wrap)
        if self.file is not None:
            seen = [0]

            def wrap(f):
                def replace(src, dst, *args, **kwargs):
                    if os.path.basename(str(dst)) == self.file:
                        seen[0] += 1
                        if seen[0] == self.n:
                            self._send(trainer)
                    return f(src, dst, *args, **kwargs)
                return replace
            self._patch(os, "replace", wrap)

    def on_train_start(self, trainer, pl_module):
        if self.opt_step is not None:
            opt, steps = trainer.optimizers[0], [0]
            original = opt.step

            def step(*args, **kwargs):
                out = original(*args, **kwargs)
                steps[0] += 1
                if steps[0] == self.opt_step:
                    self._send(trainer)
                return out
            opt.step = step

    def teardown(self, trainer, pl_module, stage):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo = []
'''


@pytest.fixture(autouse=True)
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sighooks.py").write_text(HOOKS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    stopping.clear()
    assert signal.getsignal(signal.SIGTERM) is not stopping._record  # the fit put the old one back


def rows(run: Path, name: str = "metrics.csv") -> list[dict[str, str]]:
    """The rows without wall-clock columns (``*seconds``), which no two runs share."""
    with open(run / name, newline="") as fh:
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(fh)]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def fit(run: Path, *extra: str) -> None:
    main(["fit", *COMMON, *extra, "--trainer.default_root_dir", str(run)])


def stopped_fit(run: Path, hook: list[str], *extra: str, capfd: pytest.CaptureFixture) -> str:
    """The fit with the signal hook: it must exit 75; returns its stop line."""
    with pytest.raises(SystemExit) as exit_:
        fit(run, *extra, "--trainer.callbacks+=sighooks.SignalAt", *hook)
    assert exit_.value.code == stopping.REQUEUE_EXIT_CODE
    line = [ln for ln in capfd.readouterr().err.splitlines() if "stopped on" in ln]
    assert len(line) == 1, line
    return line[0]


def resumed_equals_reference(run: Path, ref: Path, *extra: str, files: tuple[str, ...] = ()) -> None:
    """The folder as a resume finds it, then the resume: rows, weights and ``files`` as ``ref``'s."""
    folder = RunFolder(run)
    ckpt = folder.resume_checkpoint()
    if ckpt is not None:  # metrics.csv holds exactly the rows its checkpoint counts
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]["MetricsCSV"]
        assert len(rows(run)) == state["rows"]
        main(["fit", *COMMON, *extra, "--trainer.default_root_dir", str(run), "--ckpt_path", str(ckpt)])
    else:
        main(["fit", *COMMON, *extra, "--trainer.default_root_dir", str(run), "--overwrite", "true"])
    assert rows(run) == rows(ref)
    a, b = weights(run), weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in files:
        pa, pb = sorted(run.glob(name)), sorted(ref.glob(name))
        assert [p.relative_to(run) for p in pa] == [p.relative_to(ref) for p in pb] and pa, name
        for x, y in zip(pa, pb, strict=True):
            assert x.read_bytes() == y.read_bytes() or _same_tensors(x, y), x


def _same_tensors(x: Path, y: Path) -> bool:
    """Equal contents, wall-clock entries (``*seconds``) aside."""
    if x.suffix == ".npz":
        import numpy as np

        a, b = np.load(x), np.load(y)
        return sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files
                                                          if "seconds" not in k)
    if x.suffix == ".pt":
        return _equal(torch.load(x, weights_only=False), torch.load(y, weights_only=False))
    if x.suffix == ".json":
        import json

        return _equal(json.loads(x.read_text()), json.loads(y.read_text()))
    return False


def _equal(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in a if "seconds" not in str(k)}
        return keys == {k for k in b if "seconds" not in str(k)} and all(_equal(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if hasattr(a, "__dict__") and type(a) is type(b):
        return _equal(vars(a), vars(b))
    return a == b


def test_signal_inside_a_call_of_several_steps(tmp_path: Path, capfd) -> None:
    """SIGUSR1 after optimizer step 27 of calls of 8 steps (27 is inside the fourth call): the fit
    stops right there, in epoch 1, and resumes from epoch 0's checkpoint to the reference."""
    ref = tmp_path / "ref"
    fit(ref, "--model.steps_per_call", "8")
    run = tmp_path / "run"
    line = stopped_fit(run, ["--trainer.callbacks.signum", str(int(signal.SIGUSR1)),
                             "--trainer.callbacks.opt_step", "27"], "--model.steps_per_call", "8",
                       capfd=capfd)
    assert "stopped on SIGUSR1 at step 27 (epoch 1); exit code 75" in line
    assert f"resumes from {run / 'checkpoints'}" in line and "--ckpt_path" in line
    assert [r["epoch"] for r in rows(run) if r.get("train/loss")] == ["0"]
    resumed_equals_reference(run, ref, "--model.steps_per_call", "8")


def test_signal_before_the_first_checkpoint_starts_over(tmp_path: Path, capfd) -> None:
    ref = tmp_path / "ref"
    fit(ref)
    run = tmp_path / "run"
    line = stopped_fit(run, ["--trainer.callbacks.opt_step", "5"], capfd=capfd)
    assert "stopped on SIGTERM at step 5 (epoch 0)" in line and "No checkpoint was written yet" in line
    assert "--overwrite true" in line
    assert rows(run) == []  # nothing past a checkpoint stays
    resumed_equals_reference(run, ref)


HESSIAN = ["-c", str(REPO / "callbacks" / "hessian.yaml"), "--trainer.callbacks.schedule", "epochs",
           "--trainer.callbacks.probe_size", "200", "--trainer.callbacks.lanczos_iters", "12",
           "--trainer.callbacks.bottom_iters", "12", "--trainer.callbacks.slq_runs", "1",
           "--trainer.callbacks.slq_iters", "8", "--trainer.callbacks.progress_every", "null"]


def test_sigterm_inside_a_hessian_probe(tmp_path: Path, capfd) -> None:
    """The probe after epoch 2 is stopped at its first product after the signal (no product runs
    after it); the resume probes again and every row and probe file equals the reference's."""
    ref = tmp_path / "ref"
    fit(ref, *HESSIAN)
    run = tmp_path / "run"
    line = stopped_fit(run, ["--trainer.callbacks.where", "hvp", "--trainer.callbacks.after_step", "48"],
                       *HESSIAN, capfd=capfd)
    assert "stopped on SIGTERM at step 48 (epoch 2)" in line
    import sighooks

    hook = sighooks.SignalAt.last
    assert hook.sent_at == 48 and hook.calls_after == 0
    resumed_equals_reference(run, ref, *HESSIAN, files=("hessian/*",))


REGIONS = ["-c", str(REPO / "callbacks" / "regions.yaml"), "--trainer.callbacks.num_planes", "2",
           "--trainer.callbacks.resolution", "16", "--trainer.callbacks.schedule", "every",
           "--trainer.callbacks.render_planes", "0"]


def test_sigterm_inside_a_region_snapshot(tmp_path: Path, capfd) -> None:
    ref = tmp_path / "ref"
    fit(ref, *REGIONS)
    run = tmp_path / "run"
    line = stopped_fit(run, ["--trainer.callbacks.where", "regions", "--trainer.callbacks.after_step", "32"],
                       *REGIONS, capfd=capfd)
    assert "stopped on SIGTERM at step 32 (epoch 1)" in line  # epoch 1's snapshot, at its end
    resumed_equals_reference(run, ref, *REGIONS, files=("regions/*.npz",))


IMP = ["-c", str(REPO / "callbacks" / "imp.yaml"), "--trainer.callbacks.levels", "1",
       "--trainer.callbacks.epochs_per_level", "2"]


def test_two_sigusr2_inside_an_imp_level_change(tmp_path: Path, capfd) -> None:
    """Two signals while level 1's mask is written (the level change after epoch 1): the change
    completes, the fit stops at the next step and resumes to the reference's levels and rows."""
    ref = tmp_path / "ref"
    fit(ref, *IMP)
    run = tmp_path / "run"
    line = stopped_fit(run, ["--trainer.callbacks.signum", str(int(signal.SIGUSR2)),
                             "--trainer.callbacks.file", "mask.pt", "--trainer.callbacks.n", "2",
                             "--trainer.callbacks.times", "2"], *IMP, capfd=capfd)
    assert "stopped on SIGUSR2" in line and "(epoch 2)" in line
    resumed_equals_reference(run, ref, *IMP, files=("imp/summary.json", "imp/level_*/mask.pt"))


def test_signals_while_the_checkpoint_is_written(tmp_path: Path, capfd) -> None:
    """Two SIGTERMs just before epoch 1's last.ckpt lands: the save completes (the handler only
    records), the fit stops at the next step, and that checkpoint is the one it resumes from."""
    ref = tmp_path / "ref"
    fit(ref)
    run = tmp_path / "run"
    line = stopped_fit(run, ["--trainer.callbacks.file", "last.ckpt", "--trainer.callbacks.n", "2",
                             "--trainer.callbacks.times", "2"], capfd=capfd)
    assert "stopped on SIGTERM at step 33 (epoch 2)" in line
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)  # intact, epoch 1 done
    assert saved["global_step"] == 32 and (run / "checkpoints" / "epoch=001.ckpt").is_file()
    resumed_equals_reference(run, ref)


@pytest.mark.ddp
def test_ddp_stops_every_rank_at_the_step_one_rank_was_signalled(tmp_path: Path) -> None:
    """Two gloo processes; only rank 0 gets SIGTERM after step 10 (of 8 a rank and epoch): both
    ranks stop at that step boundary, the launcher exits 75, and a DDP resume equals the
    uninterrupted DDP fit."""
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}

    def run(folder: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "overparam_lit", "fit", *COMMON, *ddp, *extra,
                               "--trainer.default_root_dir", str(folder)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    ref = run(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    stopped = run(tmp_path / "run", "--trainer.callbacks+=sighooks.SignalAt", "--trainer.callbacks.opt_step",
                  "10", "--trainer.callbacks.rank", "0")
    assert stopped.returncode == stopping.REQUEUE_EXIT_CODE, stopped.stderr[-3000:]
    lines = [ln for ln in stopped.stderr.splitlines() if "stopped on" in ln]
    assert len(lines) == 1 and "stopped on SIGTERM at step 10 (epoch 1)" in lines[0], lines
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumed = run(tmp_path / "run", "--ckpt_path", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert rows(tmp_path / "run") == rows(tmp_path / "ref")
    a, b = weights(tmp_path / "run"), weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_handlers_record_and_are_put_back() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    stopping.clear()
    assert stopping.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not rename the stop
        assert stopping.requested() == signal.SIGUSR1
        with pytest.raises(stopping.StopRequested, match="stopped on SIGUSR1"):
            stopping.check()
        stopping.local_checks(False)  # under DDP loops do not stop on their own
        stopping.check()
    finally:
        stopping.local_checks(True)
        stopping.uninstall()
        stopping.clear()
    assert signal.getsignal(signal.SIGUSR1) is before

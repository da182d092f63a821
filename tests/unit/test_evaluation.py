"""Per-member evaluation over a fixed set (:mod:`overparam_lit.evaluation`): the one loop gives the
numbers of a Hessian probe's loss, the losses around a widening and the IMP / ticket split
evaluations, for single models and stacks of members, in eval mode, without recording gradients."""

from __future__ import annotations

import math
import signal

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from overparam_lit import stopping
from overparam_lit.callbacks.masked import evaluate_members
from overparam_lit.curvature import probe as cp
from overparam_lit.data import TeacherStudent
from overparam_lit.escape import widen_step as wd
from overparam_lit.evaluation import (
    chunks,
    hessian_probe_losses,
    member_loss_fn,
    member_totals,
    widen_probe_losses,
)
from overparam_lit.models import MLP
from overparam_lit.testing import Blobs, tiny_trainer

U32 = 2.0 ** -24  # unit roundoff of float32
N = 203  # probe set size: not a multiple of the chunk sizes below, so the last chunk is short

# single models and stacks: same-width seeds (batched kernels) and padded widths
MEMBERS = {
    "single": {"width": 8},
    "seeds": {"width": 8, "seeds": [0, 1]},
    "widths": {"widths": [4, 8], "seeds": [3]},
}


def model(kind: str, task: str = "classification") -> MLP:
    torch.manual_seed(0)
    classes = 4 if task == "classification" else 1
    return MLP(depth=2, input_shape=(8,), num_classes=classes, task=task, **MEMBERS[kind])


def probe_set(task: str = "classification", n: int = N) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(n, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g) if task == "classification" else torch.randn(n, generator=g)
    return x, y


@torch.no_grad()
def direct_mean(forward: nn.Module, module: MLP, x: Tensor, y: Tensor, chunk: int | None) -> Tensor:
    """Each member's mean loss chunk by chunk in eval mode: float32 chunk means times the chunk's
    size, summed in float64 in order, over the number of samples."""
    was = [(m, m.training) for m in forward.modules()]
    forward.eval()
    step = chunk or x.shape[0]
    total = sum(module.member_losses(forward(x[s:s + step]), y[s:s + step]).double() * x[s:s + step].shape[0]
                for s in range(0, x.shape[0], step))
    for m, mode in was:
        m.training = mode
    return total / x.shape[0]


def chunking_atol(mean_loss: Tensor, n: int, fan_in: int) -> Tensor:
    """How far two float32 evaluations of the same mean loss may be apart when their chunks differ.

    A chunk's loss is a float32 mean of per-sample losses ``l_i >= 0`` (cross-entropy, squared
    error), whose recursive sum of ``b <= n`` terms rounds by at most about ``b * u * sum |l_i|``
    (u = 2**-24); the float64 sum of chunk ``mean * size`` adds nothing of that order. So each
    mean is within ``n * u * mean |l_i|`` of the exact one and two of them within twice that.
    Another batch size may also round the forward differently (GEMM blocking): each logit is a
    dot product of at most ``fan_in`` terms per layer, and the loss moves by at most the logit's
    error, which adds ``fan_in * u`` relative to losses of the logits' size (a factor 4 covers
    the constants)."""
    return 4 * (n + fan_in) * U32 * mean_loss.abs()


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("kind", list(MEMBERS))
def test_adapters_equal_the_probe_and_widen_losses(kind: str, task: str) -> None:
    """Same chunks, same summation order: bit for bit the numbers of curvature's and widening's
    ``probe_losses`` and of a direct chunk loop, and the modes of the network / whole module are as
    they were."""
    m = model(kind, task)
    x, y = probe_set(task)
    list(m.net.modules())[-1].eval()  # a mixed-mode network stays mixed
    modes = [mod.training for mod in m.modules()]
    for chunk in (1000, 50, 7, None):
        ours, theirs = hessian_probe_losses(m, x, y, chunk), cp.probe_losses(m, x, y, chunk)
        assert ours.dtype == np.float64 and ours.shape == (m.num_members,)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(ours, direct_mean(m.net, m, x, y, chunk).numpy())
        assert [mod.training for mod in m.modules()] == modes
    for chunk in (1000, 50, 7):
        ours_t, theirs_t = widen_probe_losses(m, x, y, chunk), wd.probe_losses(m, x, y, chunk)
        assert ours_t.dtype == torch.float64 and ours_t.device.type == "cpu"
        assert torch.equal(ours_t, theirs_t) and torch.equal(ours_t, direct_mean(m, m, x, y, chunk))
        assert [mod.training for mod in m.modules()] == modes


def test_adapters_cast_to_the_network_precision() -> None:
    """A float64 network gets float64 inputs and regression targets from float32 data, as the
    probe and widening functions do."""
    m = model("seeds", "regression").double()
    x, y = probe_set("regression")
    np.testing.assert_array_equal(hessian_probe_losses(m, x, y, 40), cp.probe_losses(m, x, y, 40))
    assert torch.equal(widen_probe_losses(m, x, y, 40), wd.probe_losses(m, x, y, 40))
    exact = m.member_losses(m(x.double()), y.double()).double()
    np.testing.assert_array_equal(hessian_probe_losses(m, x, y, None), exact.detach().numpy())


@pytest.mark.parametrize("kind", list(MEMBERS))
def test_one_chunk_is_the_member_losses(kind: str) -> None:
    """One chunk of ``n`` samples: ``mean * n / n`` in float64 is exactly the float32 mean (the
    product of a 24-bit mantissa and ``n < 2**29`` is exact), so the loop returns ``member_losses``
    itself; other chunkings agree to the rounding of float32 sums (:func:`chunking_atol`)."""
    m = model(kind)
    x, y = probe_set()
    with torch.no_grad():
        m.eval()
        exact = m.member_losses(m(x), y).double()
        m.train()
    one = member_totals(m, member_loss_fn(m), (x, y))
    assert torch.equal(one.mean_loss(), exact)
    assert float(one.count) == N
    for chunk in (1, 7, 50):
        got = member_totals(m, member_loss_fn(m), (x, y), chunk_size=chunk).mean_loss()
        assert torch.all((got - exact).abs() <= chunking_atol(exact, N, 8)), (chunk, got, exact)
        # an iterable of batches of that size is the same loop
        batches = [(x[s:s + chunk], y[s:s + chunk]) for s in range(0, N, chunk)]
        assert torch.equal(member_totals(m, member_loss_fn(m), batches).mean_loss(), got)
    # a batch larger than chunk_size is cut; batches as given when chunk_size is None
    batches = [(x[:100], y[:100]), (x[100:], y[100:])]
    assert [b[0].shape[0] for b in chunks(batches, 40)] == [40, 40, 20, 40, 40, 23]
    assert [b[0].shape[0] for b in chunks(batches)] == [100, 103]
    assert [b[0].shape[0] for b in chunks((x, y), 100)] == [100, 100, 3]


def test_accuracy_counts_each_members_argmax() -> None:
    m = model("seeds")
    x, y = probe_set()
    with torch.no_grad():
        hits = (m(x).argmax(-1) == y).sum(-1).double()
    got = member_totals(m, member_loss_fn(m), (x, y), chunk_size=17, accuracy=True, stacked=True)
    assert torch.equal(got.correct, hits) and torch.equal(got.accuracy(), hits / N)
    single = model("single")
    with torch.no_grad():
        hit = (single(x).argmax(-1) == y).sum().double().reshape(1)
    assert torch.equal(member_totals(single, member_loss_fn(single), (x, y), chunk_size=17,
                                     accuracy=True).correct, hit)


def test_empty_set_and_the_non_distributed_reduction() -> None:
    """Without an initialised process group ``distributed=True`` changes nothing; an empty set
    gives zero sums of the members' shape (a rank without samples joins the reduction)."""
    m = model("seeds")
    x, y = probe_set()
    plain = member_totals(m, member_loss_fn(m), (x, y), chunk_size=30, accuracy=True, stacked=True)
    assert not torch.distributed.is_initialized()
    reduced = member_totals(m, member_loss_fn(m), (x, y), chunk_size=30, accuracy=True, stacked=True,
                            distributed=True)
    for a, b in zip((plain.loss, plain.correct, plain.count), (reduced.loss, reduced.correct, reduced.count),
                    strict=True):
        assert torch.equal(a, b)
    empty = member_totals(m, member_loss_fn(m), (x[:0], y[:0]), accuracy=True, members=2, distributed=True)
    assert empty.loss.shape == (2,) and float(empty.count) == 0
    assert torch.equal(empty.mean_loss(), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(empty.accuracy(), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(Exception, match="chunk_size must be None or an integer >= 1"):
        member_totals(m, member_loss_fn(m), (x, y), chunk_size=0)


def test_eval_mode_is_restored_and_no_gradient_is_recorded() -> None:
    """BatchNorm and dropout act in eval mode (running statistics untouched, no units dropped),
    each submodule's own flag comes back, and no graph or gradient is made."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 4))
    net[1].eval()  # a submodule kept in eval mode during training stays in eval mode
    modes = [mod.training for mod in net.modules()]
    stats = net[1].running_mean.clone()
    x, y = probe_set()
    seen = []

    def loss(out: Tensor, target: Tensor) -> Tensor:
        seen.append((torch.is_grad_enabled(), out.requires_grad, net[2].training))
        return nn.functional.cross_entropy(out, target).reshape(1)

    got = member_totals(net, loss, (x, y), chunk_size=50)
    assert seen == [(False, False, False)] * 5
    assert [mod.training for mod in net.modules()] == modes and torch.is_grad_enabled()
    assert torch.equal(net[1].running_mean, stats)
    assert all(p.grad is None for p in net.parameters()) and not got.loss.requires_grad
    twice = member_totals(net, loss, (x, y), chunk_size=50)  # dropout off: deterministic
    assert torch.equal(got.loss, twice.loss)


def test_a_stop_signal_stops_between_chunks_and_restores_modes() -> None:
    m = model("seeds")
    x, y = probe_set()
    calls = []

    def loss(out: Tensor, target: Tensor) -> Tensor:
        calls.append(out.shape[1])
        if len(calls) == 2:
            stopping._record(signal.SIGUSR1, None)  # the handler, as if the signal arrived now
        return m.member_losses(out, target)

    try:
        with pytest.raises(stopping.StopRequested):
            member_totals(m, loss, (x, y), chunk_size=50, checks=True)
        assert calls == [50, 50] and m.training and m.net.training
        stopping.local_checks(False)  # under DDP only the step boundary stops
        member_totals(m, loss, (x, y), chunk_size=50, checks=True)
        stopping.local_checks(True)
        member_totals(m, loss, (x, y), chunk_size=50)  # callers that do not check run through
    finally:
        stopping.clear()
        stopping.local_checks(True)


@torch.no_grad()
def direct_evaluation(trainer: L.Trainer, module: MLP, split: str) -> dict[str, Tensor]:
    """The split's loader batch by batch: each member's mean loss (clean targets) and accuracy,
    batch ``mean * size`` and correct predictions summed in float64."""
    was = module.training
    module.eval()
    loss, hits, n = None, None, 0
    for batch in getattr(trainer.datamodule, f"{split}_dataloader")():
        x, y = batch[0].to(module.device).to(module.dtype), batch[-1].to(module.device)
        out = module(x)
        part = module.member_losses(out, y).double() * x.shape[0]
        loss = part if loss is None else loss + part
        if module.task == "classification":
            hit = ((out if module.members is not None else out.unsqueeze(0)).argmax(-1) == y).sum(-1).double()
            hits = hit if hits is None else hits + hit
        n += x.shape[0]
    module.train(was)
    res = {f"{split}/loss": loss / n}
    if module.task == "classification":
        res[f"{split}/acc"] = hits / n
    return res


class Evaluate(L.Callback):
    """At the end of a fit, where IMP's last level is evaluated: ``evaluate_members`` and
    :func:`direct_evaluation` of every split, and the modes around them."""

    def __init__(self, splits: tuple[str, ...]) -> None:
        self.splits = splits

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        before = [m.training for m in pl_module.modules()]
        self.ours = {s: evaluate_members(trainer, pl_module, s) for s in self.splits}
        self.modes_kept = [m.training for m in pl_module.modules()] == before
        self.direct = {s: direct_evaluation(trainer, pl_module, s) for s in self.splits if self.ours[s]}


@pytest.mark.parametrize("kind", list(MEMBERS))
def test_evaluate_members_of_a_fit(kind: str, tmp_path) -> None:
    """Bit for bit the per-batch float64 sums of the split's loader, for single models and stacks,
    classification and regression; and the same as the loop over the split's tensors in chunks of
    the loader's batch size."""
    for task in ("classification", "regression"):
        m = model(kind, task)
        if task == "classification":
            dm = Blobs(input_shape=(8,), num_classes=4, n_train=64, n_test=60, batch_size=16,
                       eval_batch_size=25, val_size=16)
        else:
            dm = TeacherStudent(input_dim=8, n_train=64, n_test=60, batch_size=16, eval_batch_size=25,
                                val_size=16)
        cb = Evaluate(("val", "test", "holdout"))
        tiny_trainer(tmp_path / task, [cb], max_steps=3).fit(m, datamodule=dm)
        assert cb.modes_kept
        assert cb.ours["holdout"] == {}  # no such split is no evaluation
        for split in ("val", "test"):
            keys = {f"{split}/loss", f"{split}/acc"} if task == "classification" else {f"{split}/loss"}
            assert set(cb.ours[split]) == keys
            for key in keys:
                got = cb.ours[split][key]
                assert got.dtype == torch.float64 and got.shape == (m.num_members,)
                assert torch.equal(got, cb.direct[split][key]), (key, got, cb.direct[split][key])
        x, _, y_true = dm.probe_set(None, "test")
        totals = member_totals(m, member_loss_fn(m), (x, y_true), chunk_size=25,
                               accuracy=task == "classification",
                               stacked=m.members is not None)
        assert torch.equal(totals.mean_loss(), cb.ours["test"]["test/loss"])
        assert math.isclose(float(totals.count), 60)

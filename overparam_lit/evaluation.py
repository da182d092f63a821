"""Each member's loss (and accuracy) over a fixed set of examples, in eval mode, in chunks.

A *member* is one network of a stack (``seeds=...`` / ``widths=...``, outputs ``(M, B, ...)``); a
single model is one member. :func:`member_totals` is the one loop behind every such evaluation (the
IMP levels' and ticket controls' splits, a Hessian probe's loss, the losses around a widening): it
owns the data in chunks, eval mode (restored module by module afterwards, also when a stop signal
interrupts), ``torch.no_grad``, the sample-weighted float64 sums and, when asked, their sum over
``torch.distributed`` ranks. A caller only says which network to call and which loss it measures.

Each chunk's loss is a mean over its samples in the fit's precision (float32, usually), so the sums
depend on the chunking: the same chunks give the same bits, other chunks agree to the rounding of
a float32 sum. Accumulating chunk ``mean * size`` in float64 adds no rounding of its own that matters, and
the sample counts and correct predictions are exact.

This module imports no Lightning: the pure packages (curvature/, escape/) call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from overparam_lit import stopping
from overparam_lit.protocols import network_of
from overparam_lit.utils import check

__all__ = ["Batches", "LossFn", "MemberTotals", "chunks", "eval_mode", "member_loss_fn", "member_totals",
           "hessian_probe_losses", "widen_probe_losses"]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``(outputs, targets) -> (M,)``: each member's mean loss on one chunk."""

Batches = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]
"""Inputs and targets as two tensors (cut into chunks), or any iterable of ``(x, y)`` batches."""


@dataclass(frozen=True)
class MemberTotals:
    """Sample-weighted sums over a set (and over ranks when reduced), float64 on the device.

    Attributes:
        loss: ``(M,)`` each member's summed per-sample loss (chunk ``mean * size``, summed).
        correct: ``(M,)`` each member's number of correct predictions (``None``: not counted).
        count: ``()`` the number of samples.
    """

    loss: Tensor
    correct: Tensor | None
    count: Tensor

    def mean_loss(self) -> Tensor:
        """``(M,)`` each member's mean loss (zeros for an empty set)."""
        return self.loss / self.count.clamp_min(1)

    def accuracy(self) -> Tensor:
        """``(M,)`` each member's fraction of correct predictions (zeros for an empty set)."""
        assert self.correct is not None, "member_totals(..., accuracy=True) counts correct predictions"
        return self.correct / self.count.clamp_min(1)


def member_loss_fn(module: nn.Module) -> LossFn:
    """The loss of a members fit: ``module.member_losses`` (``(M,)`` of a stack's outputs, ``(1,)``
    of a single model's), or for a module without it its scalar mean ``module.loss`` as ``(1,)``."""
    if hasattr(module, "member_losses"):
        return module.member_losses
    return lambda out, y: module.loss(out, y).reshape(1)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block; afterwards every submodule's own training flag is
    back (a submodule kept in eval mode during training stays so), also after an exception."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def chunks(data: Batches, chunk_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The ``(x, y)`` chunks of ``data``: two tensors cut into ``chunk_size`` samples (``None``: one
    chunk), or an iterable's batches as they come, each cut into ``chunk_size`` samples if given."""
    check(chunk_size is None or (isinstance(chunk_size, int) and chunk_size >= 1),
          "chunk_size must be None or an integer >= 1", chunk_size,
          "Pass the samples per chunk (memory bound), or None for the whole set at once.")
    pairs = [data] if isinstance(data, tuple) and len(data) == 2 and all(map(torch.is_tensor, data)) \
        else data
    for x, y in pairs:  # type: ignore[misc]
        step = chunk_size or int(x.shape[0])
        if step >= x.shape[0]:
            if x.shape[0] > 0:
                yield x, y
            continue
        for start in range(0, x.shape[0], step):
            yield x[start:start + step], y[start:start + step]


@torch.no_grad()
def member_totals(module: nn.Module, loss_fn: LossFn, data: Batches, *, chunk_size: int | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  cast_targets: bool = True, accuracy: bool = False, stacked: bool = False,
                  members: int | None = None, distributed: bool = False, checks: bool = False,
                  ) -> MemberTotals:
    """Each member's summed loss (and correct predictions) over ``data``, in eval mode, without
    recording gradients.

    Args:
        module: called on a chunk of inputs for the outputs (``(B, ...)`` or ``(M, B, ...)``); it is
            in eval mode during the loop and every submodule's training flag is restored after it.
        loss_fn: ``(outputs, targets) -> (M,)`` each member's mean loss (:func:`member_loss_fn`).
        data: two tensors ``(x, y)`` or an iterable of ``(x, y)`` batches (:func:`chunks`).
        chunk_size: samples per chunk (``None``: two tensors at once, an iterable's batches as given).
        device: where chunks are moved to (``None``: left where they are).
        dtype: floating inputs are cast to it (the precision of the fit; ``None``: left as they are).
        cast_targets: floating targets are cast to ``dtype`` as well (regression targets).
        accuracy: count correct predictions (classification: the arg max of the last axis).
        stacked: the outputs carry a leading member axis (a stack of members).
        members: ``M``, the size of the (all zero) sums of an empty set: a rank without samples
            still joins the reduction with the right shape (``None``: 1).
        distributed: sum the totals over the ranks of ``torch.distributed`` when it is initialised.
        checks: call :func:`overparam_lit.stopping.check` before every chunk, so a stop signal does
            not wait for the rest of the set (a no-op under DDP, see
            :func:`~overparam_lit.stopping.local_checks`: no rank leaves before the reduction).
    """
    loss: Tensor | None = None
    correct: Tensor | None = None
    count = 0
    with eval_mode(module):
        for x, y in chunks(data, chunk_size):
            if checks:
                stopping.check()
            if device is not None:
                x, y = x.to(device), y.to(device)
            if dtype is not None and x.is_floating_point():
                x = x.to(dtype)
            if dtype is not None and cast_targets and y.is_floating_point():
                y = y.to(dtype)
            out = module(x)
            n = x.shape[0]
            part = loss_fn(out, y).double() * n
            loss = part if loss is None else loss + part
            if accuracy:
                hits = ((out if stacked else out.unsqueeze(0)).argmax(-1) == y).sum(-1).double()
                correct = hits if correct is None else correct + hits
            count += n
    if loss is None:
        at = torch.device(device) if device is not None else torch.device("cpu")
        loss = torch.zeros(members or 1, dtype=torch.float64, device=at)
        correct = torch.zeros_like(loss) if accuracy else None
    total = torch.tensor(float(count), dtype=torch.float64, device=loss.device)
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [loss, *([correct] if correct is not None else []), total.reshape(1)]
        sums = torch.cat(parts)  # type: ignore[arg-type]
        torch.distributed.all_reduce(sums)
        m = loss.shape[0]
        loss, total = sums[:m], sums[-1]
        correct = sums[m:2 * m] if correct is not None else None
    return MemberTotals(loss=loss, correct=correct, count=total)


def _param(module: nn.Module) -> Tensor:
    return next(network_of(module).parameters())


def hessian_probe_losses(module: nn.Module, x: Tensor, y: Tensor, chunk_size: int | None = 1000,
                         distributed: bool = False) -> np.ndarray:
    """A Hessian probe's loss: each member's mean loss (:func:`member_loss_fn`) of the network
    ``module.net`` (``module`` itself without one) on ``(x, y)``, in eval mode of the network, in
    ``chunk_size`` chunks; under ``torch.distributed`` every rank passes its shard and the sums are
    all-reduced. ``(M,)`` float64 (``(1,)`` for a single model)."""
    net, param = network_of(module), _param(module)
    totals = member_totals(net, member_loss_fn(module), (x, y), chunk_size=chunk_size or None,
                           device=param.device, dtype=param.dtype, distributed=distributed)
    return totals.mean_loss().cpu().numpy()


def widen_probe_losses(module: nn.Module, x: Tensor, y: Tensor, chunk_size: int = 1000) -> Tensor:
    """The losses around a widening: each member's mean training loss (``module.member_losses``) of
    ``module`` on ``(x, y)``, in eval mode of the whole module, in ``chunk_size`` chunks: ``(M,)``
    float64 on the CPU."""
    param = _param(module)
    totals = member_totals(module, module.member_losses, (x, y), chunk_size=chunk_size,
                           device=param.device, dtype=param.dtype)
    # divided by a Python number (on CUDA a multiplication by its reciprocal), as Widen records them
    return (totals.loss / max(int(x.shape[0]), 1)).cpu()

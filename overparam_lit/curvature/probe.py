"""One Hessian probe of a network on a fixed probe set: a single model or every member of a stack.

:func:`probe_spectra` builds the operator (the summed member losses of a stack are one
block-diagonal operator, :class:`~overparam_lit.curvature.members.MemberHessian`) and runs
:func:`~overparam_lit.curvature.spectrum.hessian_spectrum_batched`, so a stack's ``M`` spectra
cost the products of one. Member ``i``'s summary equals the single-model probe of member ``i``'s
own network with the same seed (same start vectors, same operator).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from overparam_lit.curvature.hvp import HessianOperator, layer_subsets
from overparam_lit.curvature.lanczos import lanczos_batched
from overparam_lit.curvature.members import MemberHessian
from overparam_lit.curvature.plan import ProbeOptions
from overparam_lit.curvature.plots import densities
from overparam_lit.curvature.spectrum import SpectrumSummary, hessian_spectrum_batched
from overparam_lit.curvature.subset import subset_dims
from overparam_lit.evaluation import hessian_probe_losses
from overparam_lit.protocols import network_of
from overparam_lit.utils import ConfigError, check

LossFn = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each Hessian-vector product of a probe, with the
products done so far and the most the probe may spend (:attr:`ProbeBudget.total`)."""
@dataclass(frozen=True)
class ProbeBudget:
    """The size of one probe and the most Hessian-vector products it may spend.

    A product is one batched product of the operator (for a stack, one product of the summed
    member losses gives every member's). Each budget is capped at the largest member's dimension
    (a run stops once its Krylov space is the whole space), so :attr:`total` is the most products
    a probe may call, and its logged ``hessian/num_hvps`` (its members' mean, per-layer runs not
    counted) never exceeds it.

    Attributes:
        dims: parameters spanning each member's Hessian (one entry for a single model).
        members: ``M`` for a stack, ``None`` for a single model.
        samples: samples of the probe set (over all ranks).
        top: the Lanczos run's budget for both ends (``lanczos_iters``).
        bottom: the products it may run on to while only the bottom end is unconverged
            (``bottom_iters``, at least ``top``): the Lanczos run's most products.
        slq_runs, slq_iters: SLQ runs and products per run (the trace comes from their starts).
        layers: products of each per-layer ``lambda_max`` run (empty without ``per_layer``).
    """

    dims: tuple[int, ...]
    members: int | None
    samples: int
    top: int
    bottom: int
    slq_runs: int
    slq_iters: int
    layers: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        """The most products the probe may spend: the Lanczos run, SLQ and per-layer runs."""
        return self.bottom + self.slq_runs * self.slq_iters + sum(self.layers)

    def describe(self) -> str:
        """One line: ``78,858 parameters x 2 members, 1000 samples; at most 940 products
        (Lanczos top 100 / bottom 300, SLQ 8 x 80)``."""
        lo, hi = min(self.dims), max(self.dims)
        params = f"{hi:,} parameters" if lo == hi else f"{lo:,}-{hi:,} parameters"
        count = self.members or 1
        size = f"{params} x {count} member{'s' if count != 1 else ''}, {self.samples} samples"
        parts = [f"Lanczos top {self.top} / bottom {self.bottom}"]
        if self.slq_runs:
            parts.append(f"SLQ {self.slq_runs} x {self.slq_iters}")
        if self.layers:
            parts.append(f"per layer {len(self.layers)} x {max(self.layers)}")
        return f"{size}; at most {self.total} products ({', '.join(parts)})"


def probe_budget(net: nn.Module, names: Sequence[str], masks: Mapping[str, Tensor], members: int | None,
                 opts: ProbeOptions, samples: int, per_layer: bool = False) -> ProbeBudget:
    """The :class:`ProbeBudget` of :func:`probe_network` with these arguments (``samples``: the
    probe set's size over all ranks)."""
    dims = subset_dims(net, names, masks, members)
    top = max(min(opts.lanczos_iters, d) for d in dims)
    bottom = max(top, max(min(opts.bottom_iters or opts.lanczos_iters, d) for d in dims))
    slq_iters = max(min(opts.slq_iters, d) for d in dims) if opts.slq_runs else 0
    layers = []
    if per_layer:
        for group in layer_subsets(net).values():
            group = [n for n in group if n in names]
            if group:
                layers.append(max(min(opts.lanczos_iters, d)
                                  for d in subset_dims(net, group, masks, members)))
    return ProbeBudget(tuple(dims), members, int(samples), top, bottom, opts.slq_runs, slq_iters,
                       tuple(layers))


class _Counted:
    """A matvec that counts its products and reports each to ``progress(done, total)``."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress, self.done = int(total), progress, 0

    def wrap(self, matvec: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        if self.progress is None:
            return matvec

        def counted(v: Tensor) -> Tensor:
            out = matvec(v)
            self.done += 1
            self.progress(self.done, self.total)  # type: ignore[misc]
            return out

        return counted


def check_k(k: int, dims: Sequence[int]) -> None:
    """Refuse ``k`` eigenvalues per end of a Hessian whose subset has fewer than ``k`` dimensions."""
    check(k <= min(dims), "k (eigenvalues per end) exceeds the number of parameters", k,
          f"The Hessian subset has {min(dims)} parameters; set k <= {min(dims)}.")


def member_count(module: nn.Module) -> int | None:
    """``M`` for a stack (a model with ``members``), ``None`` for a single model."""
    return module.num_members if getattr(module, "members", None) is not None else None


def probe_loss(module: nn.Module) -> LossFn:
    """The loss a probe differentiates: the module's ``loss``, or for a stack the sum of its
    members' mean losses (``member_losses``), whose Hessian is block diagonal."""
    if member_count(module) is not None:
        return lambda out, y: module.member_losses(out, y).sum()
    return module.loss


def probe_losses(module: nn.Module, x: Tensor, y: Tensor, chunk_size: int | None = 1000,
                 distributed: bool = False) -> np.ndarray:
    """Each member's mean loss on the probe set (``(1,)`` for a single model), in eval mode; under
    ``torch.distributed`` every rank passes its shard and the sample-weighted sums are all-reduced.
    The ``loss`` a probe's spectrum belongs to, saved beside it."""
    return hessian_probe_losses(module, x, y, chunk_size, distributed)


def check_probe_fit(module: nn.Module, datamodule: Any) -> None:
    """Refuse a data module without ``probe_set(num_samples, split, seed)`` or a module without
    ``loss(outputs, targets)``."""
    check(datamodule is not None and hasattr(datamodule, "probe_set"),
          "HessianProbe needs a data module with a probe_set(num_samples, split, seed) method",
          type(datamodule).__name__, "Train with an overparam-lit data module (ArrayDataModule).")
    check(hasattr(module, "loss"), "HessianProbe needs the module's loss(outputs, targets)",
          type(module).__name__, "Use an OverparamModule or define loss().")


@torch.no_grad()
def check_scalar_loss(module: nn.Module, x: Tensor, y: Tensor) -> None:
    """Refuse a module whose ``loss(outputs, targets)`` is not a scalar mean (tried on two samples of
    ``(x, y)`` in eval mode; a stack's first member)."""
    net = network_of(module)
    device = next(module.parameters()).device
    was = net.training
    net.eval()
    out = module(x[:2].to(device))
    loss = module.loss(out[0] if member_count(module) is not None else out, y[:2].to(device))
    net.train(was)
    if not (torch.is_tensor(loss) and loss.ndim == 0):
        raise ConfigError(f"HessianProbe needs a scalar mean loss (got shape "
                          f"{tuple(torch.as_tensor(loss).shape)}). Make loss() reduce with mean.")


def _operator(net: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, names: Sequence[str],
              masks: Mapping[str, Tensor], members: int | None, opts: ProbeOptions, distributed: bool,
              buffers: Mapping[str, Tensor] | None) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """A batched matvec ``(M, D) -> (M, D)`` and the active-coordinate mask ``(M, D)``."""
    if members is None:
        op = HessianOperator(net, loss_fn, x, y, params=list(names), masks=dict(masks),
                             chunk_size=opts.chunk_size, method=opts.method, dtype=opts.dtype,
                             distributed=distributed, buffers=buffers)
        mask = torch.ones(1, op.dim, dtype=torch.bool, device=op.device)
        return (lambda v: op.matvec(v[0]).unsqueeze(0)), mask
    op = HessianOperator(net, loss_fn, x, y, params=list(names), masks=None,
                         chunk_size=opts.chunk_size, method=opts.method, dtype=opts.dtype,
                         distributed=distributed, buffers=buffers)
    mh = MemberHessian(op, members, masks={n: m for n, m in masks.items() if n in names})
    return mh.matvec, mh.mask


def probe_spectra(net: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, names: Sequence[str],
                  masks: Mapping[str, Tensor], members: int | None, opts: ProbeOptions,
                  distributed: bool = False, buffers: Mapping[str, Tensor] | None = None,
                  counter: _Counted | None = None) -> list[SpectrumSummary]:
    """Spectrum summaries of the Hessian of ``loss_fn`` on ``(x, y)``: one for a single model
    (``members=None``), else one per member (``loss_fn`` is then the *sum* of the members' mean
    losses and ``masks`` hold each member's kept entries with a leading member axis)."""
    matvec, mask = _operator(net, loss_fn, x, y, names, masks, members, opts, distributed, buffers)
    matvec = counter.wrap(matvec) if counter is not None else matvec
    check_k(opts.k, [int(d) for d in mask.sum(1)])
    return hessian_spectrum_batched(
        matvec, mask, k=opts.k, lanczos_iters=opts.lanczos_iters, tol=opts.tol, slq_runs=opts.slq_runs,
        slq_iters=opts.slq_iters, negative_eps=opts.negative_eps, seed=opts.seed, dtype=opts.dtype,
        device=mask.device, bottom_iters=opts.bottom_iters)


def layer_lambda_max(net: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, names: Sequence[str],
                     masks: Mapping[str, Tensor], members: int | None, opts: ProbeOptions,
                     distributed: bool = False, buffers: Mapping[str, Tensor] | None = None,
                     counter: _Counted | None = None) -> dict[str, list[float]]:
    """The largest eigenvalue of each layer's diagonal Hessian block (per member)."""
    out = {}
    for layer, group in layer_subsets(net).items():
        group = [n for n in group if n in names]
        if not group:
            continue
        matvec, mask = _operator(net, loss_fn, x, y, group, masks, members, opts, distributed, buffers)
        matvec = counter.wrap(matvec) if counter is not None else matvec
        gens = [torch.Generator().manual_seed(opts.seed) for _ in range(mask.shape[0])]
        res = lanczos_batched(matvec, mask, k=1, max_iters=opts.lanczos_iters, tol=opts.tol,
                              generators=gens, dtype=opts.dtype, device=mask.device, which="top")
        out[layer or "root"] = [float(r.top[0]) for r in res]
    return out


def member_means(summaries: Sequence[SpectrumSummary]) -> dict[str, float]:
    """The logged scalars: a single model's own, or means over members (NaN entries, such as an
    unresolved ``lambda_min``, are left out of the mean; flags become resolved fractions)."""
    if len(summaries) == 1:
        return summaries[0].scalars()
    rows = [s.scalars() for s in summaries]
    out = {}
    for key in rows[0]:
        vals = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        out[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def stacked_arrays(summaries: Sequence[SpectrumSummary]) -> dict[str, np.ndarray]:
    """Every member's arrays with a leading member axis (ragged arrays padded with NaN)."""
    per = [s.arrays() for s in summaries]
    out = {}
    for key in per[0]:
        arrs = [np.asarray(p[key]) for p in per]
        shape = tuple(max(a.shape[d] for a in arrs) for d in range(arrs[0].ndim))
        if all(a.shape == shape for a in arrs):
            out[key] = np.stack(arrs)
            continue
        padded = np.full((len(arrs), *shape), np.nan)
        for i, a in enumerate(arrs):
            padded[(i, *tuple(slice(0, s) for s in a.shape))] = a
        out[key] = padded
    return out


def probe_network(net: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, names: Sequence[str],
                  masks: Mapping[str, Tensor], members: int | None, opts: ProbeOptions,
                  distributed: bool = False, buffers: Mapping[str, Tensor] | None = None,
                  eval_mode: bool = True, per_layer: bool = False, progress: Progress | None = None,
                  budget: ProbeBudget | None = None
                  ) -> tuple[list[SpectrumSummary], dict[str, list[float]]]:
    """One probe that leaves training untouched: :func:`probe_spectra` (and, with ``per_layer``,
    :func:`layer_lambda_max`) in eval mode when ``eval_mode``, with gradients on, autocast off and
    the RNG state restored afterwards, as are the modules' training modes.

    ``progress(done, total)`` is called after each product (on every rank), ``total`` being the
    ``budget``'s :attr:`~ProbeBudget.total` (default: :func:`probe_budget` of these arguments,
    ``x`` taken as the whole probe set). It only watches: the results do not depend on it."""
    counter = None
    if progress is not None:
        budget = budget or probe_budget(net, names, masks, members, opts, int(x.shape[0]), per_layer)
        counter = _Counted(budget.total, progress)
    device = next(net.parameters()).device
    modes = {m: m.training for m in net.modules()}
    try:
        if eval_mode:
            net.eval()
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device.type, enabled=False):
            args = (net, loss_fn, x, y, names, masks, members, opts, distributed, buffers, counter)
            summaries = probe_spectra(*args)
            layers = layer_lambda_max(*args) if per_layer else {}
    finally:
        for m, mode in modes.items():
            m.training = mode
    return summaries, layers


def probe_scalars(summaries: Sequence[SpectrumSummary], layers: Mapping[str, Sequence[float]],
                  seconds: float, step: int, epoch: int) -> dict[str, float]:
    """The logged ``hessian/*`` scalars of a probe (:func:`member_means`, each layer's mean
    ``lambda_max``, ``seconds``, ``step`` and ``epoch``) as plain floats (weights-only checkpoints)."""
    scalars = member_means(summaries)
    scalars.update({f"hessian/layer/{k}/lambda_max": float(np.mean(v)) for k, v in layers.items()})
    scalars.update({"hessian/seconds": seconds, "hessian/step": float(step), "hessian/epoch": float(epoch)})
    return {k: float(v) for k, v in scalars.items()}


def probe_arrays(summaries: Sequence[SpectrumSummary], layers: Mapping[str, Sequence[float]], step: int,
                 epoch: int, rows: Sequence[Mapping[str, Any]] | None, density_width: float
                 ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray, float] | None]:
    """The arrays of a probe's ``.npz``: the summaries' (a leading member axis for a stack, whose
    member ``rows`` give ``member_seed`` and ``member_width``; ``None`` for a single model),
    ``step``, ``epoch``, ``layer_lambda_max/<layer>`` and, when every summary has SLQ,
    ``density_grid``, ``density`` and ``density_sigma``. Returns them and the densities
    ``(grid, (M, G), sigma)`` (``None`` without SLQ)."""
    stacked = rows is not None
    arrays = stacked_arrays(summaries) if stacked else summaries[0].arrays()
    arrays.update(step=np.int64(step), epoch=np.int64(epoch))
    arrays.update({f"layer_lambda_max/{k}": np.asarray(v if stacked else v[0]) for k, v in layers.items()})
    if rows is not None:
        arrays.update(member_seed=np.array([r["seed"] for r in rows]),
                      member_width=np.array([r["width"] for r in rows]))
    if not all(s.slq is not None for s in summaries):
        return arrays, None
    grid, dens, sigma = densities(summaries, density_width)
    arrays.update(density_grid=grid, density=dens if stacked else dens[0], density_sigma=np.float64(sigma))
    return arrays, (grid, dens, sigma)

"""``HessianProbe``: Hessian spectrum of the training loss on a fixed probe set, during training;
a thin adapter over :mod:`overparam_lit.curvature` (schedule, DDP shards, logs, artifacts)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from typing_extensions import override

from overparam_lit.callbacks.options import takes_options
from overparam_lit.curvature.plan import ProbeOptions, ProbePlan
from overparam_lit.curvature.subset import kept_masks, subset_dims, subset_names
from overparam_lit.models.steps import StepAwareCallback
from overparam_lit.protocols import ModelChanging, network_of
from overparam_lit.runfolder import RunFolder
from overparam_lit.schedules import log_spaced
from overparam_lit.utils import atomic_save_npz, check, log_image, log_scalars

if TYPE_CHECKING:
    from overparam_lit.curvature.probe import ProbeBudget
    from overparam_lit.curvature.spectrum import SpectrumSummary

def log_spaced_steps(max_step: int, num_probes: int) -> list[int]:
    """About ``num_probes`` distinct steps in ``[1, max_step]``, spaced evenly in log scale."""
    return log_spaced(max_step, num_probes)


def _say(trainer: L.Trainer, line: str) -> None:
    """Print ``line`` to stderr on rank zero (``sys.stderr`` looked up now: a sweep's fit may
    have replaced it)."""
    if trainer.is_global_zero:
        print(line, file=sys.stderr, flush=True)


class _ProbeLines:
    """A probe's console lines, as its ``progress(done, total)`` callable: the start line after the
    second product (size, budget, and the estimate ``first + (total - 1) x second product's
    time``: the first product also builds the gradient graph that the others reuse, so it takes
    about twice as long), then a progress line every ``every`` seconds."""

    def __init__(self, trainer: L.Trainer, step: int, budget: ProbeBudget, t0: float, every: float) -> None:
        self.trainer, self.step, self.budget, self.t0, self.every = trainer, step, budget, t0, every
        self.done, self.lines, self.next_at, self.started = 0, 0, t0, False
        self.first, self.second, self.then = 0.0, 0.0, t0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        now = time.perf_counter()
        if done == 1:
            self.first = self.second = now - self.t0
        elif done == 2:
            self.second = now - self.then
        self.then = now
        if done >= min(2, total) and not self.started:
            self.start()
        elif self.started and now >= self.next_at:
            _say(self.trainer, f"hessian probe step {self.step}: {done}/{total} products, "
                               f"{now - self.t0:.0f} s")
            self.lines += 1
            self.next_at = now + self.every

    def start(self) -> None:
        """The start line (once; a probe that stops after its first product prints it at its end)."""
        total = self.budget.total
        _say(self.trainer, f"hessian probe step {self.step}: {self.budget.describe()}; about "
                           f"{_seconds(self.first + (total - 1) * self.second)} (first product "
                           f"{_duration(self.first)}, then {_duration(self.second)} each)")
        self.started, self.next_at = True, self.t0 + self.every

    def finish(self) -> None:
        """After the probe: the start line if not yet printed, and a last line after progress lines."""
        if not self.started:
            self.start()
        if self.lines:
            _say(self.trainer, f"hessian probe step {self.step}: done, {self.done} products, "
                               f"{time.perf_counter() - self.t0:.0f} s")


def _duration(s: float) -> str:
    """``12 ms`` below a second, else ``1.4 s``."""
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.1f} s"


def _seconds(s: float) -> str:
    """``about`` what: ``4 s``, ``0.4 s``, ``12 min``."""
    if s < 1:
        return f"{s:.1f} s"
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.0f} min"


@dataclass(frozen=True, kw_only=True)
class HessianProbeOptions(ProbeOptions, ProbePlan):
    """The options of :class:`HessianProbe`, checked on construction: when it probes (the fields of
    :class:`ProbePlan`), what a probe computes (those of :class:`ProbeOptions`), and how the
    callback runs the probes (its own fields, below).

    Args:
        eval_mode: probe in eval mode (BatchNorm running statistics, no dropout).
        params: names (or name prefixes) of the parameters spanning the Hessian; default all.
        per_layer: also log ``hessian/layer/<module>/lambda_max`` for each layer's block.
        masks_attr: attribute of the module holding ``{param name: 0/1 mask}``; a pruning study
            (IMP, ticket starts) puts its masks in ``pruning_masks`` (only unpruned weights span
            the Hessian); ``None`` ignores masks. A stack's padding never counts.
        save_figure: save and log the density picture.
        progress_every: seconds between a probe's progress lines on the console (rank zero,
            stderr). Every probe prints a start line after its second Hessian-vector product: its
            size, its budget (the most products it may spend) and an estimate of its time from its
            first two products (the first also builds what the others reuse), e.g. ``hessian probe
            step 120: 78,858 parameters x 1 member, 1000 samples; at most 940 products (Lanczos
            top 100 / bottom 300, SLQ 8 x 80); about 9 s (first product 19 ms, then 10 ms each)``.
            A probe that runs longer than ``progress_every`` seconds then prints ``hessian probe
            step 120: 517/940 products, 10 s`` that often, and a last line when it is done. ``0``
            prints after every product; ``None`` prints nothing.
    """

    eval_mode: bool = True
    params: Sequence[str] | None = None
    per_layer: bool = False
    masks_attr: str | None = "pruning_masks"
    save_figure: bool = True
    progress_every: float | None = 10.0

    def __post_init__(self) -> None:
        ProbePlan.__post_init__(self)
        ProbeOptions.__post_init__(self)
        check(self.progress_every is None or self.progress_every >= 0, "progress_every must be >= 0 seconds",
              self.progress_every, "Use e.g. 10 (seconds between progress lines), 0 for every product, "
              "or null for no console lines.")
        object.__setattr__(self, "params", None if self.params is None else list(self.params))


@takes_options(HessianProbeOptions)
class HessianProbe(StepAwareCallback):
    """Probe the Hessian spectrum of the training loss during training.

    Each probe computes, on a fixed probe set from ``trainer.datamodule.probe_set``, the top-k and
    bottom-k eigenvalues (Lanczos with full reorthogonalisation; each end with its own residual
    bound, and ``lambda_min`` only where its sign is resolved), the fraction of eigenvalues below
    ``-negative_eps * lambda_max`` and the density (stochastic Lanczos quadrature), and the
    Hutchinson trace. It logs ``hessian/lambda_max``, ``hessian/lambda_min`` (NaN when unresolved),
    ``hessian/lambda_min_bound``, ``hessian/lambda_min_resolved``, ``hessian/trace``,
    ``hessian/negative_fraction``, ``hessian/top_k/<i>``, ``hessian/num_hvps`` with ``hessian/step``
    as the x axis, and saves ``hessian/probe_step<step>.npz`` and ``density_step<step>.png``.

    With members every member gets its own spectrum from the products of one (the Hessian of the
    summed member losses is block diagonal): the logged scalars are member means, the arrays in
    the ``.npz`` carry a leading member axis, and the picture overlays the members' densities.

    A probe does not change training: products run on detached copies through ``torch.func``,
    BatchNorm runs in eval mode by default, the RNG state is restored, autocast is off. Under DDP
    the probe set is split over ranks, products are summed over them, and every rank uses rank 0's
    buffers (BatchNorm statistics), so the spectrum is that of the checkpointed network.

    The options are the fields of :class:`HessianProbeOptions`, given as one
    ``HessianProbeOptions`` or as keywords (:func:`~overparam_lit.callbacks.options.takes_options`).
    """

    def __init__(self, options: HessianProbeOptions) -> None:
        super().__init__()
        self.opts = options
        self.probed_steps: list[int] = []
        self.history: list[dict[str, float]] = []
        self._points: set[int] = set()
        self._waiting: int | None = None  # a step whose probe waits for a model change
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None

    def _masks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """Kept entries: the module's ``masks_attr`` (``pruning_masks``, which a pruning study sets:
        :class:`~overparam_lit.protocols.StudyModule`), and-ed with a stack's structural masks
        (:func:`~overparam_lit.curvature.subset.kept_masks`)."""
        found = getattr(pl_module, self.opts.masks_attr, None) if self.opts.masks_attr else None
        return kept_masks(network_of(pl_module), found)

    def _probe_set(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        if self._probe is None:
            x, y, _ = trainer.datamodule.probe_set(self.opts.probe_size, self.opts.split, self.opts.seed)
            self._probe = (x, y)
        return self._probe

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the data module, the loss and the subset before any training step."""
        from overparam_lit.curvature import probe as cp  # scipy and matplotlib load with the first probe

        if stage != "fit":
            return
        cp.check_probe_fit(pl_module, trainer.datamodule)
        self._probe = None
        x, y = self._probe_set(trainer)
        net = network_of(pl_module)
        dims = subset_dims(net, subset_names(net, self.opts.params), self._masks(trainer, pl_module),
                           cp.member_count(pl_module))
        cp.check_k(self.opts.k, dims)
        cp.check_scalar_loss(pl_module, x, y)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.opts.schedule == "log_steps":  # after every setup: an IMP callback's longer fit counts
            self._points = self.opts.resolve(self.opts.max_step or int(trainer.estimated_stepping_batches))
        if self.opts.probe_at_start:
            self._probe_unless_changing(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.due_at(trainer.global_step):
            self._probe_unless_changing(trainer, pl_module)

    def _probe_unless_changing(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Probe now, unless a study changes the model at this step: that study requests the probe
        (:meth:`probe_once`) once the change is made, so the probe sees the changed network."""
        step = int(trainer.global_step)
        if any(isinstance(cb, ModelChanging) and cb.changes_model_at(trainer, step)
               for cb in trainer.callbacks):
            self._waiting = step
        else:
            self._maybe_probe(trainer, pl_module)

    def due_at(self, step: int) -> bool:
        """True when a probe is due after optimizer step ``step``: the step schedule's, or one
        that waited for a study changing the model at that step."""
        return (self.opts.unit == "steps" and self.opts.due(step, self._points)) or self._waiting == step

    def probe_once(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Probe at the current step unless it has been probed; what another study calls to have
        the network probed now (Widen, around its widening, and for a scheduled probe at the
        widening step once the network is wide). True when it probed."""
        if int(trainer.global_step) in self.probed_steps or trainer.sanity_checking:
            return False
        self._maybe_probe(trainer, pl_module)
        return True

    @override
    def next_event_step(self, trainer: L.Trainer, step: int) -> int | None:
        """The next probe step of a step schedule (``None`` on the ``epochs`` schedule)."""
        return self.opts.next_point(step, self._points) if self.opts.unit == "steps" else None

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.opts.unit == "epochs" and self.opts.due(trainer.current_epoch + 1, self._points):
            self._maybe_probe(trainer, pl_module)

    def _maybe_probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        if step in self.probed_steps or trainer.sanity_checking:
            return
        self.probed_steps.append(step)
        self.probe(trainer, pl_module)

    def probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[SpectrumSummary]:
        """Run one probe now (all ranks), log and save it and print its console lines (rank zero);
        return the summaries."""
        from overparam_lit.curvature import probe as cp  # scipy and matplotlib load with the first probe

        net, (r, w) = network_of(pl_module), (trainer.global_rank, trainer.world_size)
        t0 = time.perf_counter()
        x, y = self._probe_set(trainer)
        buffers = {n: b.detach().clone() for n, b in net.named_buffers()} if w > 1 else None
        for n in sorted(buffers or {}):  # under DDP every rank takes rank 0's BatchNorm statistics
            buffers[n] = trainer.strategy.broadcast(buffers[n], src=0)
        names, masks, members = subset_names(net, self.opts.params), self._masks(trainer, pl_module), \
            cp.member_count(pl_module)
        budget = cp.probe_budget(net, names, masks, members, self.opts, int(x.shape[0]), self.opts.per_layer)
        progress = None if self.opts.progress_every is None else \
            _ProbeLines(trainer, int(trainer.global_step), budget, t0, float(self.opts.progress_every))
        summaries, layers = cp.probe_network(
            net, cp.probe_loss(pl_module), x[r::w], y[r::w], names, masks, members, self.opts, w > 1,
            buffers, self.opts.eval_mode, self.opts.per_layer, progress, budget)
        loss = cp.probe_losses(pl_module, x[r::w], y[r::w], self.opts.chunk_size, w > 1)
        step = int(trainer.global_step)
        scalars = cp.probe_scalars(summaries, layers, time.perf_counter() - t0, step, trainer.current_epoch)
        scalars["hessian/loss"] = float(np.nanmean(loss))
        self.history.append(scalars)
        log_scalars(trainer, scalars, step=step)
        if trainer.global_rank == 0:
            self._save(trainer, pl_module, summaries, layers, step, loss)
        if progress is not None:
            progress.finish()
        return summaries

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, summaries: list[SpectrumSummary],
              layers: dict[str, list[float]], step: int, loss: np.ndarray) -> None:
        from overparam_lit.curvature import probe as cp
        from overparam_lit.curvature.plots import density_figure

        run = RunFolder.of(trainer)
        rows = pl_module.member_rows() if cp.member_count(pl_module) is not None else None
        arrays, density = cp.probe_arrays(summaries, layers, step, trainer.current_epoch, rows,
                                          self.opts.density_width)
        if density is not None and self.opts.save_figure:
            labels = [f"w{r['width']} s{r['seed']}" for r in rows] if rows is not None else [""]
            path = density_figure(summaries, *density, labels, step, run.hessian_density(step))
            log_image(trainer, "hessian/density", path, caption=f"step {step}")
        arrays["loss"] = loss if rows is not None else np.float64(loss[0])  # the probe set's mean loss
        atomic_save_npz(run.hessian_probe(step), **arrays)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"probed_steps": list(self.probed_steps), "history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probed_steps = list(state_dict.get("probed_steps", []))
        self.history = list(state_dict.get("history", []))

"""``HessianProbe``: Hessian spectrum of the training loss on a fixed probe set, during training.

A thin Lightning adapter over :mod:`overparam_lit.curvature`: it schedules probes, shards the
probe set over DDP ranks, protects the training state, logs ``hessian/*`` scalars and saves
arrays and a density picture under ``<run_dir>/hessian/``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from typing_extensions import override

from overparam_lit.curvature.plots import densities, density_figure
from overparam_lit.curvature.probe import (
    ProbeOptions,
    layer_lambda_max,
    member_means,
    probe_spectra,
    stacked_arrays,
)
from overparam_lit.curvature.spectrum import SpectrumSummary
from overparam_lit.runfolder import RunFolder
from overparam_lit.schedules import ProbeSchedule, log_spaced
from overparam_lit.utils import ConfigError, atomic_save_npz, check, log_image, log_scalars

Schedule = Literal["epochs", "steps", "log_steps"]
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def log_spaced_steps(max_step: int, num_probes: int) -> list[int]:
    """About ``num_probes`` distinct steps in ``[1, max_step]``, spaced evenly in log scale."""
    return log_spaced(max_step, num_probes)


class HessianProbe(L.Callback):
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

    Args:
        schedule: ``epochs`` (every ``every`` epochs), ``steps`` (every ``every`` optimizer steps)
            or ``log_steps`` (``num_probes`` steps log-spaced up to ``max_step``).
        every: period of the ``epochs`` and ``steps`` schedules.
        num_probes: number of probes of the ``log_steps`` schedule.
        max_step: last step of ``log_steps`` (default: the fit's total number of optimizer steps,
            known once every callback has set up, so an IMP callback's longer fit counts).
        probe_at_start: also probe before the first step.
        probe_size: samples in the probe set (split over DDP ranks).
        split: data split of the probe set.
        seed: seed of the probe-set draw and of the random start vectors.
        chunk_size: samples per HVP chunk (memory bound).
        k: eigenvalues reported at each end of the spectrum.
        lanczos_iters: most HVPs of the Lanczos run.
        bottom_iters: most HVPs the bottom end may use to resolve the sign of ``lambda_min``
            (default: ``lanczos_iters``).
        tol: relative residual tolerance of each end of the Lanczos run.
        slq_runs: SLQ runs; 0 skips density, negative fraction and trace.
        slq_iters: Lanczos steps per SLQ run.
        negative_eps: eigenvalues below ``-negative_eps * lambda_max`` count as negative.
        density_width: Gaussian width of the pictured density, as a fraction of the spectrum's range.
        eval_mode: probe in eval mode (BatchNorm running statistics, no dropout).
        method: ``auto``, ``jvp`` (forward-over-reverse) or ``double_backward``.
        dtype: ``float32`` or ``float64``.
        params: names (or name prefixes) of the parameters spanning the Hessian; default all.
        per_layer: also log ``hessian/layer/<module>/lambda_max`` for each layer's block.
        masks_attr: attribute of the module holding ``{param name: 0/1 mask}``; when absent, the
            ``masks`` of a pruning callback on the trainer are used (only unpruned weights span the
            Hessian); ``None`` ignores masks. A stack's padding never counts.
        save_figure: save and log the density picture.
    """

    def __init__(self, schedule: Schedule = "epochs", every: int = 1, num_probes: int = 20,
                 max_step: int | None = None, probe_at_start: bool = True, probe_size: int = 1000,
                 split: str = "train", seed: int = 0, chunk_size: int = 1000, k: int = 5,
                 lanczos_iters: int = 100, bottom_iters: int | None = None, tol: float = 1e-4,
                 slq_runs: int = 10, slq_iters: int = 80, negative_eps: float = 1e-2,
                 density_width: float = 0.01, eval_mode: bool = True,
                 method: Literal["auto", "jvp", "double_backward"] = "auto",
                 dtype: Literal["float32", "float64"] = "float32", params: Sequence[str] | None = None,
                 per_layer: bool = False, masks_attr: str | None = "pruning_masks",
                 save_figure: bool = True) -> None:
        super().__init__()
        check(schedule in ("epochs", "steps", "log_steps"), "unknown Hessian probe schedule",
              schedule, "Use 'epochs', 'steps' or 'log_steps'.")
        check(max_step is None or max_step >= 1, "max_step must be >= 1", max_step,
              "Leave it unset to use the trainer's total number of steps.")
        check(isinstance(probe_size, int) and probe_size >= 1, "the probe set is empty",
              probe_size, "Set probe_size to a positive number of samples, e.g. 1000.")
        check(chunk_size >= 1, "chunk_size must be >= 1", chunk_size, "Use e.g. 1000.")
        check(isinstance(k, int) and k >= 1, "k must be a positive integer", k, "Use e.g. 5.")
        check(lanczos_iters >= 2 * k, f"lanczos_iters must be at least 2k = {2 * k} for k = {k}",
              lanczos_iters, f"Set lanczos_iters >= {2 * k} (100 is typical) or lower k.")
        check(bottom_iters is None or bottom_iters >= 2 * k, f"bottom_iters must be at least 2k = {2 * k}",
              bottom_iters, "Leave it unset to use lanczos_iters, or raise it.")
        check(tol >= 0, "tol must be >= 0", tol, "Use e.g. 1e-4.")
        check(slq_runs >= 0, "slq_runs must be >= 0", slq_runs, "Use e.g. 10 (0 skips SLQ).")
        check(slq_iters >= 1, "slq_iters must be >= 1", slq_iters, "Use e.g. 80.")
        check(negative_eps >= 0, "negative_eps must be >= 0", negative_eps, "Use e.g. 1e-2.")
        check(density_width > 0, "density_width must be > 0", density_width, "Use e.g. 0.01.")
        check(method in ("auto", "jvp", "double_backward"), "unknown HVP method", method,
              "Use 'auto', 'jvp' or 'double_backward'.")
        check(dtype in _DTYPES, "unknown dtype", dtype, "Use 'float32' or 'float64'.")
        self.schedule = schedule
        self.plan = ProbeSchedule("log" if schedule == "log_steps" else "every", every, num_probes,
                                  at_start=probe_at_start, at_end=schedule == "log_steps")
        self.max_step, self.probe_size, self.split = max_step, probe_size, split
        self.opts = ProbeOptions(k, lanczos_iters, tol, slq_runs, slq_iters, negative_eps, seed, chunk_size,
                                 method, _DTYPES[dtype], bottom_iters)
        self.density_width, self.eval_mode = density_width, eval_mode
        self.params = list(params) if params is not None else None
        self.per_layer, self.masks_attr, self.save_figure = per_layer, masks_attr, save_figure
        self.probed_steps: list[int] = []
        self.history: list[dict[str, float]] = []
        self._points: set[int] = set()
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- what spans the Hessian ------------------------------------------------------------
    def _param_names(self, net: torch.nn.Module) -> list[str]:
        names = [n for n, p in net.named_parameters() if p.requires_grad]
        if self.params is None:
            return names
        chosen = [n for n in names if any(n == s or n.startswith(s + ".") for s in self.params)]
        check(bool(chosen), "no parameter matches the Hessian subset", self.params,
              f"Use names or prefixes of the network's parameters, e.g. {names[:3]}.")
        return chosen

    def _masks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """Kept entries by the network's parameter names: pruning masks (the module's
        ``masks_attr``, else a pruning callback's ``masks``) and a stack's structural masks."""
        net = getattr(pl_module, "net", pl_module)
        out = {n: m.bool() for n, m in (getattr(net, "structure", None) or {}).items()}
        found = getattr(pl_module, self.masks_attr, None) if self.masks_attr else None
        for cb in trainer.callbacks if self.masks_attr and not found else []:
            if cb is not self and isinstance(getattr(cb, "masks", None), dict) and cb.masks:
                found = cb.masks
                break
        names = dict(net.named_parameters())
        for name, m in dict(found or {}).items():
            key = name[len("net."):] if name not in names and name.startswith("net.") else name
            if key in names:
                mine = m.to(names[key].device) != 0
                out[key] = mine if key not in out else out[key].to(mine.device) & mine
        return out

    def _loss(self, pl_module: L.LightningModule):
        if getattr(pl_module, "members", None) is not None:
            return lambda out, y: pl_module.member_losses(out, y).sum()
        return pl_module.loss

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the data module, the loss and the subset before any training step."""
        if stage != "fit":
            return
        dm = trainer.datamodule
        check(dm is not None and hasattr(dm, "probe_set"),
              "HessianProbe needs a data module with a probe_set(num_samples, split, seed) method",
              type(dm).__name__, "Train with an overparam-lit data module (ArrayDataModule).")
        check(hasattr(pl_module, "loss"), "HessianProbe needs the module's loss(outputs, targets)",
              type(pl_module).__name__, "Use an OverparamModule or define loss().")
        x, y, _ = dm.probe_set(self.probe_size, self.split, self.opts.seed)
        net = getattr(pl_module, "net", pl_module)
        names = self._param_names(net)
        masks = self._masks(trainer, pl_module)
        members = getattr(pl_module, "num_members", 1) if getattr(pl_module, "members", None) else None
        dims = []
        for i in range(members or 1):
            dims.append(sum(int(masks[n][i].sum() if members else masks[n].sum()) if n in masks
                            else (p[0].numel() if members else p.numel())
                            for n, p in net.named_parameters() if n in names))
        check(self.opts.k <= min(dims), "k (eigenvalues per end) exceeds the number of parameters",
              self.opts.k, f"The Hessian subset has {min(dims)} parameters; set k <= {min(dims)}.")
        with torch.no_grad():
            was = net.training
            net.eval()
            loss = pl_module.loss(pl_module(x[:2].to(pl_module.device))[0] if members else
                                  pl_module(x[:2].to(pl_module.device)), y[:2].to(pl_module.device))
            net.train(was)
        if not (torch.is_tensor(loss) and loss.ndim == 0):
            raise ConfigError(f"HessianProbe needs a scalar mean loss (got shape "
                              f"{tuple(torch.as_tensor(loss).shape)}). Make loss() reduce with mean.")
        self._probe = (x, y)

    # ---- schedule ---------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule == "log_steps":
            self._points = self.plan.resolve(self.max_step or int(trainer.estimated_stepping_batches))
        if self.plan.at_start:
            self._maybe_probe(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if (self.schedule == "steps" and step % self.plan.every == 0
                or self.schedule == "log_steps" and step in self._points):
            self._maybe_probe(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule == "epochs" and (trainer.current_epoch + 1) % self.plan.every == 0:
            self._maybe_probe(trainer, pl_module)

    def _maybe_probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        if step in self.probed_steps or trainer.sanity_checking:
            return
        self.probed_steps.append(step)
        self.probe(trainer, pl_module)

    # ---- the probe ----------------------------------------------------------------------------
    def _rank0_buffers(self, trainer: L.Trainer, net: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Copies of rank 0's buffers on every rank (``None`` in a single process)."""
        if trainer.world_size <= 1:
            return None
        out = {n: b.detach().clone() for n, b in net.named_buffers()}
        for n in sorted(out):
            out[n] = trainer.strategy.broadcast(out[n], src=0)
        return out

    def probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[SpectrumSummary]:
        """Run one probe now (all ranks), log and save it (rank zero); return the summaries."""
        net = getattr(pl_module, "net", pl_module)
        device = next(net.parameters()).device
        modes = {m: m.training for m in net.modules()}
        members = pl_module.num_members if getattr(pl_module, "members", None) is not None else None
        t0 = time.perf_counter()
        try:
            if self.eval_mode:
                net.eval()
            cuda = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), torch.enable_grad(), \
                    torch.autocast(device.type, enabled=False):
                if self._probe is None:
                    x, y, _ = trainer.datamodule.probe_set(self.probe_size, self.split, self.opts.seed)
                    self._probe = (x, y)
                r, w = trainer.global_rank, trainer.world_size
                x, y = self._probe[0][r::w], self._probe[1][r::w]
                args = (net, self._loss(pl_module), x, y, self._param_names(net),
                        self._masks(trainer, pl_module), members, self.opts, w > 1,
                        self._rank0_buffers(trainer, net))
                summaries = probe_spectra(*args)
                layers = layer_lambda_max(*args) if self.per_layer else {}
        finally:
            for m, mode in modes.items():
                m.training = mode
        step = int(trainer.global_step)
        scalars = member_means(summaries)
        scalars.update({f"hessian/layer/{k}/lambda_max": float(np.mean(v)) for k, v in layers.items()})
        scalars.update({"hessian/seconds": time.perf_counter() - t0, "hessian/step": float(step),
                        "hessian/epoch": float(trainer.current_epoch)})
        scalars = {k: float(v) for k, v in scalars.items()}  # plain floats: weights-only checkpoints
        self.history.append(scalars)
        log_scalars(trainer, scalars, step=step)
        if trainer.global_rank == 0:
            self._save(trainer, pl_module, summaries, layers, step)
        return summaries

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, summaries: list[SpectrumSummary],
              layers: dict[str, list[float]], step: int) -> None:
        run = RunFolder.of(trainer)
        stacked = getattr(pl_module, "members", None) is not None
        arrays = stacked_arrays(summaries) if stacked else summaries[0].arrays()
        arrays.update(step=np.int64(step), epoch=np.int64(trainer.current_epoch))
        arrays.update({f"layer_lambda_max/{k}": np.asarray(v if stacked else v[0])
                       for k, v in layers.items()})
        if stacked:
            rows = pl_module.member_rows()
            arrays.update(member_seed=np.array([r["seed"] for r in rows]),
                          member_width=np.array([r["width"] for r in rows]))
        if all(s.slq is not None for s in summaries):
            grid, dens, sigma = densities(summaries, self.density_width)
            arrays.update(density_grid=grid, density=dens if stacked else dens[0],
                          density_sigma=np.float64(sigma))
            if self.save_figure:
                labels = [f"w{r['width']} s{r['seed']}" for r in pl_module.member_rows()] if stacked else [""]
                path = density_figure(summaries, grid, dens, sigma, labels, step,
                                      run.hessian_density(step))
                log_image(trainer, "hessian/density", path, caption=f"step {step}")
        atomic_save_npz(run.hessian_probe(step), **arrays)

    # ---- checkpoint state -------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"probed_steps": list(self.probed_steps), "history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probed_steps = list(state_dict.get("probed_steps", []))
        self.history = list(state_dict.get("history", []))

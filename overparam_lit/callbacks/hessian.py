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
from torch import nn

from overparam_lit.curvature import (
    HessianOperator,
    SpectrumSummary,
    hessian_spectrum,
    lanczos,
    layer_subsets,
)
from overparam_lit.utils import (
    ConfigError,
    atomic_save_npz,
    atomic_savefig,
    check,
    log_image,
    log_scalars,
    run_dir,
)

Schedule = Literal["epochs", "steps", "log_steps"]
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def log_spaced_steps(max_step: int, num_probes: int) -> list[int]:
    """About ``num_probes`` distinct steps in ``[1, max_step]``, spaced evenly in log scale."""
    if max_step < 1:
        return []
    raw = np.geomspace(1, max_step, num=max(num_probes, 1))
    return sorted({int(round(s)) for s in raw})


class HessianProbe(L.Callback):
    """Probe the Hessian spectrum of the training loss during training.

    Each probe computes, on a fixed probe set from ``trainer.datamodule.probe_set``: the top-k
    and bottom-k eigenvalues (one Lanczos run with full reorthogonalisation), the fraction of
    eigenvalues below ``-negative_eps * lambda_max`` and the spectral density (stochastic
    Lanczos quadrature, Rademacher starts), and the Hutchinson trace with its standard error
    (from the same SLQ start vectors). It logs ``hessian/lambda_max``, ``hessian/lambda_min``,
    ``hessian/trace``, ``hessian/trace_stderr``, ``hessian/negative_fraction``,
    ``hessian/top_k/<i>``, ``hessian/num_hvps`` (with ``hessian/step`` as the x axis), saves
    ``hessian/probe_step<step>.npz`` and a density picture ``hessian/density_step<step>.png``.

    A probe does not change training: the products run on detached copies with ``torch.func``
    (``.grad`` untouched), BatchNorm runs in eval mode by default (training mode restored after),
    the global RNG state is restored, autocast is off and the computation is in ``dtype``.

    Args:
        schedule: ``epochs`` (every ``every`` epochs), ``steps`` (every ``every`` optimizer
            steps) or ``log_steps`` (``num_probes`` steps log-spaced up to ``max_step``:
            dense early, sparse late).
        every: period of the ``epochs`` and ``steps`` schedules.
        num_probes: number of probes of the ``log_steps`` schedule.
        max_step: last step of the ``log_steps`` schedule (default: the trainer's estimate of
            the total number of optimizer steps).
        probe_at_start: also probe before the first step.
        probe_size: samples in the probe set (split over DDP ranks).
        split: data split of the probe set (``train``, ``val`` or ``test``).
        seed: seed of the probe-set draw and of the random start vectors.
        chunk_size: samples per HVP chunk (memory bound).
        k: eigenvalues reported at each end of the spectrum.
        lanczos_iters: most HVPs of the Lanczos run.
        tol: relative Ritz-residual tolerance of the Lanczos stop.
        slq_runs: SLQ runs (Rademacher starts); 0 skips density, negative fraction and trace.
        slq_iters: Lanczos steps per SLQ run.
        negative_eps: eigenvalues below ``-negative_eps * lambda_max`` count as negative.
        density_width: Gaussian width of the pictured density, as a fraction of
            ``lambda_max - lambda_min`` (the pictures state the absolute width).
        eval_mode: probe with the network in eval mode (BatchNorm running statistics,
            no dropout); ``False`` uses batch statistics (buffers are copied, not updated).
        method: HVP method of :class:`~overparam_lit.curvature.HessianOperator`: ``auto``
            (reuse one gradient graph when the probe set is one chunk, else ``jvp``),
            ``jvp`` (torch.func forward-over-reverse) or ``double_backward``.
        dtype: ``float32`` or ``float64``.
        params: names (or name prefixes) of the parameters spanning the Hessian; default all.
        per_layer: also log ``hessian/layer/<module>/lambda_max`` for each layer's block.
        masks_attr: attribute of the LightningModule holding ``{param name: 0/1 mask}``;
            when it is absent, the ``masks`` of a pruning callback on the trainer are used.
            With masks only unpruned weights span the Hessian; ``None`` ignores masks.
            Masks of ``torch.nn.utils.prune`` are always used.
        save_figure: save and log the density picture.
    """

    def __init__(
        self,
        schedule: Schedule = "epochs",
        every: int = 1,
        num_probes: int = 20,
        max_step: int | None = None,
        probe_at_start: bool = True,
        probe_size: int = 1000,
        split: str = "train",
        seed: int = 0,
        chunk_size: int = 1000,
        k: int = 5,
        lanczos_iters: int = 100,
        tol: float = 1e-4,
        slq_runs: int = 10,
        slq_iters: int = 80,
        negative_eps: float = 1e-2,
        density_width: float = 0.01,
        eval_mode: bool = True,
        method: Literal["auto", "jvp", "double_backward"] = "auto",
        dtype: Literal["float32", "float64"] = "float32",
        params: Sequence[str] | None = None,
        per_layer: bool = False,
        masks_attr: str | None = "pruning_masks",
        save_figure: bool = True,
    ) -> None:
        super().__init__()
        check(schedule in ("epochs", "steps", "log_steps"), "unknown Hessian probe schedule",
              schedule, "Use 'epochs', 'steps' or 'log_steps'.")
        check(isinstance(every, int) and every >= 1, "every must be a positive integer", every,
              "Probe every N epochs or steps with N >= 1.")
        check(num_probes >= 1, "num_probes must be >= 1", num_probes, "Use e.g. 20.")
        check(max_step is None or max_step >= 1, "max_step must be >= 1", max_step,
              "Leave it unset to use the trainer's total number of steps.")
        check(isinstance(probe_size, int) and probe_size >= 1, "the probe set is empty",
              probe_size, "Set probe_size to a positive number of samples, e.g. 1000.")
        check(chunk_size >= 1, "chunk_size must be >= 1", chunk_size, "Use e.g. 1000.")
        check(isinstance(k, int) and k >= 1, "k must be a positive integer", k, "Use e.g. 5.")
        check(lanczos_iters >= 2 * k, "lanczos_iters must be at least 2k", lanczos_iters,
              f"Allow at least {2 * k} Lanczos steps for k={k}, e.g. 100.")
        check(tol >= 0, "tol must be >= 0", tol, "Use e.g. 1e-4.")
        check(slq_runs >= 0, "slq_runs must be >= 0", slq_runs, "Use e.g. 10 (0 skips SLQ).")
        check(slq_iters >= 1, "slq_iters must be >= 1", slq_iters, "Use e.g. 80.")
        check(negative_eps >= 0, "negative_eps must be >= 0", negative_eps, "Use e.g. 1e-2.")
        check(density_width > 0, "density_width must be > 0", density_width, "Use e.g. 0.01.")
        check(method in ("auto", "jvp", "double_backward"), "unknown HVP method", method,
              "Use 'auto', 'jvp' or 'double_backward'.")
        check(dtype in _DTYPES, "unknown dtype", dtype, "Use 'float32' or 'float64'.")
        self.schedule, self.every, self.num_probes = schedule, every, num_probes
        self.max_step, self.probe_at_start = max_step, probe_at_start
        self.probe_size, self.split, self.seed, self.chunk_size = probe_size, split, seed, chunk_size
        self.k, self.lanczos_iters, self.tol = k, lanczos_iters, tol
        self.slq_runs, self.slq_iters, self.negative_eps = slq_runs, slq_iters, negative_eps
        self.density_width, self.eval_mode, self.method = density_width, eval_mode, method
        self.dtype = _DTYPES[dtype]
        self.params = list(params) if params is not None else None
        self.per_layer, self.masks_attr, self.save_figure = per_layer, masks_attr, save_figure
        self.probed_steps: list[int] = []
        self.history: list[dict[str, float]] = []
        self._log_steps: set[int] = set()
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- set-up and checks ----------------------------------------------------------------
    @staticmethod
    def _network(pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, "net", pl_module)

    def _param_names(self, net: nn.Module) -> list[str]:
        names = [n for n, p in net.named_parameters() if p.requires_grad]
        if self.params is None:
            return names
        chosen = [n for n in names if any(n == s or n.startswith(s + ".")
                                          for s in self.params)]
        check(bool(chosen), "no parameter matches the Hessian subset", self.params,
              f"Use names or prefixes of the network's parameters, e.g. {names[:3]}.")
        return chosen

    def _masks(self, trainer: L.Trainer, pl_module: L.LightningModule,
               net: nn.Module) -> dict[str, torch.Tensor]:
        """Pruning masks keyed by the network's parameter names: the module's ``masks_attr``
        attribute, else the ``masks`` of a pruning callback (``IterativeMagnitudePruning``)."""
        if not self.masks_attr:
            return {}
        masks = getattr(pl_module, self.masks_attr, None)
        if not masks:
            for cb in trainer.callbacks:
                found = getattr(cb, "masks", None)
                if cb is not self and isinstance(found, dict) and found:
                    masks = found
                    break
        if not masks:
            return {}
        names = dict(net.named_parameters())
        out = {}
        for name, m in dict(masks).items():
            key = name[len("net."):] if name not in names and name.startswith("net.") else name
            if key in names:
                out[key] = m
        return out

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the data module, the loss and the subset size before any training step."""
        if stage != "fit":
            return
        dm = trainer.datamodule
        check(dm is not None and hasattr(dm, "probe_set"),
              "HessianProbe needs a data module with a probe_set(num_samples, split, seed) method",
              type(dm).__name__, "Train with an overparam-lit data module (ArrayDataModule).")
        check(hasattr(pl_module, "loss"), "HessianProbe needs the module's loss(outputs, targets)",
              type(pl_module).__name__, "Use an OverparamModule or define loss().")
        x, y, _ = dm.probe_set(self.probe_size, self.split, self.seed)
        check(x.shape[0] >= 1, "the probe set is empty", x.shape[0],
              "Choose a split with samples and probe_size >= 1.")
        net = self._network(pl_module)
        names = self._param_names(net)
        masks = self._masks(trainer, pl_module, net)
        dim = 0
        for n, p in net.named_parameters():
            if n in names:
                dim += int((masks[n] != 0).sum()) if n in masks else p.numel()
        check(self.k <= dim, "k (eigenvalues per end) exceeds the number of parameters", self.k,
              f"The Hessian subset has {dim} parameters; set k <= {dim}.")
        was_training = net.training
        try:
            net.eval()
            with torch.no_grad():
                dev = next(net.parameters()).device
                loss = pl_module.loss(net(x[:2].to(dev)), y[:2].to(dev))
        finally:
            net.train(was_training)
        if not (torch.is_tensor(loss) and loss.ndim == 0):
            raise ConfigError(
                f"HessianProbe needs a scalar mean loss (got shape "
                f"{tuple(torch.as_tensor(loss).shape)}). Make loss() reduce with mean."
            )
        self._probe = (x, y)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule == "log_steps":
            last = self.max_step or int(trainer.estimated_stepping_batches)
            self._log_steps = set(log_spaced_steps(last, self.num_probes))
        if self.probe_at_start:
            self._maybe_probe(trainer, pl_module)

    # ---- schedule ---------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.schedule == "steps" and step % self.every == 0 or \
                self.schedule == "log_steps" and step in self._log_steps:
            self._maybe_probe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule == "epochs" and (trainer.current_epoch + 1) % self.every == 0:
            self._maybe_probe(trainer, pl_module)

    def _maybe_probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        if step in self.probed_steps or trainer.sanity_checking:
            return
        self.probed_steps.append(step)
        self.probe(trainer, pl_module)

    # ---- the probe ----------------------------------------------------------------------------
    def _shard(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        if self._probe is None:
            x, y, _ = trainer.datamodule.probe_set(self.probe_size, self.split, self.seed)
            self._probe = (x, y)
        x, y = self._probe
        r, w = trainer.global_rank, trainer.world_size
        return x[r::w], y[r::w]

    def probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> SpectrumSummary:
        """Run one probe now (all ranks), log and save it (rank zero); return the summary."""
        net = self._network(pl_module)
        device = next(net.parameters()).device
        modes = {m: m.training for m in net.modules()}
        cuda = [device] if device.type == "cuda" else []
        t0 = time.perf_counter()
        try:
            if self.eval_mode:
                net.eval()
            with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), \
                    torch.enable_grad(), torch.autocast(device.type, enabled=False):
                x, y = self._shard(trainer)
                names = self._param_names(net)
                masks = self._masks(trainer, pl_module, net)
                op = HessianOperator(
                    net, pl_module.loss, x, y, params=names, masks=masks,
                    chunk_size=self.chunk_size,
                    method=self.method, dtype=self.dtype, distributed=trainer.world_size > 1,
                )
                summary = hessian_spectrum(
                    op, op.dim, k=min(self.k, op.dim), lanczos_iters=self.lanczos_iters,
                    tol=self.tol, slq_runs=self.slq_runs, slq_iters=self.slq_iters,
                    negative_eps=self.negative_eps, seed=self.seed, dtype=self.dtype,
                    device=device,
                )
                layers = self._per_layer(net, pl_module, x, y, names, masks, device,
                                             trainer.world_size) \
                    if self.per_layer else {}
        finally:
            for m, mode in modes.items():
                m.training = mode
        step, epoch = int(trainer.global_step), int(trainer.current_epoch)
        scalars = summary.scalars()
        scalars.update(layers)
        scalars["hessian/seconds"] = time.perf_counter() - t0
        scalars["hessian/step"] = float(step)
        scalars["hessian/epoch"] = float(epoch)
        self.history.append(scalars)
        log_scalars(trainer, scalars, step=step)
        if trainer.global_rank == 0:
            self._save(trainer, summary, step)
        return summary

    def _per_layer(self, net: nn.Module, pl_module: L.LightningModule, x: torch.Tensor,
                   y: torch.Tensor, names: list[str], masks: dict[str, torch.Tensor],
                   device: torch.device,
                   world: int) -> dict[str, float]:
        out = {}
        for layer, group in layer_subsets(net).items():
            group = [n for n in group if n in names]
            if not group:
                continue
            op = HessianOperator(net, pl_module.loss, x, y, params=group, masks=masks,
                                 chunk_size=self.chunk_size, method=self.method,
                                 dtype=self.dtype, distributed=world > 1)
            res = lanczos(op, op.dim, k=1, max_iters=self.lanczos_iters, tol=self.tol,
                          generator=torch.Generator().manual_seed(self.seed),
                          dtype=self.dtype, device=device)
            out[f"hessian/layer/{layer or 'root'}/lambda_max"] = float(res.top[0])
        return out

    def _save(self, trainer: L.Trainer, summary: SpectrumSummary, step: int) -> None:
        folder = run_dir(trainer) / "hessian"
        arrays = summary.arrays()
        arrays["step"] = np.int64(step)
        arrays["epoch"] = np.int64(trainer.current_epoch)
        sigma = self.density_width * max(summary.lambda_max - summary.lambda_min, 1e-12)
        arrays["density_sigma"] = np.float64(sigma)
        if summary.slq is not None:
            lo, hi = summary.lambda_min - 4 * sigma, summary.lambda_max + 4 * sigma
            grid = np.linspace(lo, hi, 600)
            arrays["density_grid"] = grid
            arrays["density"] = summary.slq.density(grid, sigma)
        atomic_save_npz(folder / f"probe_step{step:08d}.npz", **arrays)
        if self.save_figure and summary.slq is not None:
            path = folder / f"density_step{step:08d}.png"
            _plot_density(arrays["density_grid"], arrays["density"], summary, sigma, step, path)
            log_image(trainer, "hessian/density", path, caption=f"step {step}")

    # ---- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"probed_steps": list(self.probed_steps), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probed_steps = list(state_dict.get("probed_steps", []))
        self.history = list(state_dict.get("history", []))


def _plot_density(grid: np.ndarray, density: np.ndarray, summary: SpectrumSummary, sigma: float,
                  step: int, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    floor = max(float(density.max()) * 1e-8, 1e-300)
    ax.semilogy(grid, np.maximum(density, floor), lw=1.2)
    for v in summary.top:
        ax.axvline(v, color="C3", lw=0.6, alpha=0.6)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(
        f"Hessian spectrum, step {step}: neg. frac. {summary.negative_fraction:.3f}\n"
        f"Gaussian width {sigma:.3g}; red: top-{len(summary.top)} (Lanczos)",
        fontsize=8,
    )
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)

"""The Hessian probe's settings (no Lightning): when it runs (:class:`ProbePlan`, its ``epochs``,
``steps`` and ``log_steps`` schedules) and what one probe computes (:class:`ProbeOptions`).

:class:`ProbePlan` is a thin layer over :class:`~overparam_lit.schedules.ProbeSchedule`, the
schedule shared with the decision-region snapshots: it names the schedule's unit (completed epochs
or optimizer steps), fixes the end of ``log_steps`` (``max_step``, else the fit's length once
known) and says whether a point is due. Both are light to import (no scipy, no matplotlib), so a
callback can build its options from them at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from overparam_lit.schedules import ProbeSchedule
from overparam_lit.utils import check

SCHEDULES = ("epochs", "steps", "log_steps")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
METHODS = ("auto", "jvp", "double_backward")


@dataclass(frozen=True, kw_only=True)
class ProbePlan:
    """When the Hessian probe runs, checked on construction.

    Args:
        schedule: ``epochs`` (every ``every`` epochs), ``steps`` (every ``every`` optimizer steps)
            or ``log_steps`` (``num_probes`` steps log-spaced up to ``max_step``).
        every: period of the ``epochs`` and ``steps`` schedules.
        num_probes: number of probes of the ``log_steps`` schedule.
        max_step: last step of ``log_steps`` (default: the fit's total number of optimizer steps,
            known once every callback has set up, so an IMP callback's longer fit counts).
        probe_at_start: also probe before the first step.
    """

    schedule: Literal["epochs", "steps", "log_steps"] = "epochs"
    every: int = 1
    num_probes: int = 20
    max_step: int | None = None
    probe_at_start: bool = True
    points: ProbeSchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check(self.schedule in SCHEDULES, "unknown Hessian probe schedule", self.schedule,
              "Use 'epochs', 'steps' or 'log_steps'.")
        check(self.max_step is None or self.max_step >= 1, "max_step must be >= 1", self.max_step,
              "Leave it unset to use the trainer's total number of steps.")
        log = self.schedule == "log_steps"
        points = ProbeSchedule("log" if log else "every", self.every, self.num_probes,
                               at_start=self.probe_at_start, at_end=log)
        object.__setattr__(self, "points", points)

    @property
    def unit(self) -> str:
        """What a point counts: completed ``epochs`` or optimizer ``steps``."""
        return "epochs" if self.schedule == "epochs" else "steps"

    def resolve(self, total_steps: int) -> set[int]:
        """The steps of ``log_steps`` up to ``max_step``, else ``total_steps`` (empty for the
        periodic schedules, which need no end)."""
        if self.schedule != "log_steps":
            return set()
        return self.points.resolve(self.max_step or total_steps)

    def next_point(self, point: int, resolved: set[int]) -> int | None:
        """The first probe point ``> point`` (``None`` when ``log_steps`` has none left)."""
        if self.schedule == "log_steps":
            return min((p for p in resolved if p > point), default=None)
        return (point // self.every + 1) * self.every

    def due(self, point: int, resolved: set[int]) -> bool:
        """Whether ``point`` (``>= 1``, in :attr:`unit`) is a probe point: a multiple of ``every``,
        or one of the ``resolved`` steps of ``log_steps``."""
        return point in resolved if self.schedule == "log_steps" else point % self.every == 0


@dataclass(frozen=True, kw_only=True)
class ProbeOptions:
    """What a probe computes, checked on construction. ``dtype`` is held as the torch dtype it
    names (a torch dtype is taken as it is).

    Args:
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
        method: ``auto``, ``jvp`` (forward-over-reverse) or ``double_backward``.
        dtype: ``float32`` or ``float64``.
    """

    probe_size: int = 1000
    split: str = "train"
    seed: int = 0
    chunk_size: int = 1000
    k: int = 5
    lanczos_iters: int = 100
    bottom_iters: int | None = None
    tol: float = 1e-4
    slq_runs: int = 10
    slq_iters: int = 80
    negative_eps: float = 1e-2
    density_width: float = 0.01
    method: Literal["auto", "jvp", "double_backward"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        k, bottom = self.k, self.bottom_iters
        check(isinstance(self.probe_size, int) and self.probe_size >= 1, "the probe set is empty",
              self.probe_size, "Set probe_size to a positive number of samples, e.g. 1000.")
        check(isinstance(self.chunk_size, int) and self.chunk_size >= 1, "chunk_size must be >= 1",
              self.chunk_size, "Use e.g. 1000.")
        check(isinstance(k, int) and k >= 1, "k must be a positive integer", k, "Use e.g. 5.")
        check(self.lanczos_iters >= 2 * k, f"lanczos_iters must be at least 2k = {2 * k} for k = {k}",
              self.lanczos_iters, f"Set lanczos_iters >= {2 * k} (100 is typical) or lower k.")
        check(bottom is None or bottom >= 2 * k, f"bottom_iters must be at least 2k = {2 * k}",
              bottom, "Leave it unset to use lanczos_iters, or raise it.")
        check(self.tol >= 0, "tol must be >= 0", self.tol, "Use e.g. 1e-4.")
        check(self.slq_runs >= 0, "slq_runs must be >= 0", self.slq_runs, "Use e.g. 10 (0 skips SLQ).")
        check(self.slq_iters >= 1, "slq_iters must be >= 1", self.slq_iters, "Use e.g. 80.")
        check(self.negative_eps >= 0, "negative_eps must be >= 0", self.negative_eps, "Use e.g. 1e-2.")
        check(self.density_width > 0, "density_width must be > 0", self.density_width, "Use e.g. 0.01.")
        check(self.method in METHODS, "unknown HVP method", self.method,
              "Use 'auto', 'jvp' or 'double_backward'.")
        check(self.dtype in DTYPES or self.dtype in DTYPES.values(), "unknown dtype", self.dtype,
              "Use 'float32' or 'float64'.")
        object.__setattr__(self, "dtype", DTYPES.get(self.dtype, self.dtype))  # type: ignore[call-overload]

"""When the Hessian probe runs: its ``epochs``, ``steps`` and ``log_steps`` schedules (no Lightning).

A thin layer over :class:`~overparam_lit.schedules.ProbeSchedule`, the schedule shared with the
decision-region snapshots: it names the schedule's unit (completed epochs or optimizer steps), fixes
the end of ``log_steps`` (``max_step``, else the fit's length once known) and says whether a point
is due.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from overparam_lit.schedules import ProbeSchedule
from overparam_lit.utils import check

SCHEDULES = ("epochs", "steps", "log_steps")


@dataclass(frozen=True)
class ProbePlan:
    """The Hessian probe's schedule, checked on construction.

    Args:
        schedule: ``epochs`` (every ``every`` epochs), ``steps`` (every ``every`` optimizer steps)
            or ``log_steps`` (``num_probes`` steps log-spaced up to ``max_step``, the end included).
        every: period of ``epochs`` and ``steps``.
        num_probes: probes of ``log_steps``.
        at_start: also probe before the first step.
        max_step: last step of ``log_steps`` (default: the fit's total number of optimizer steps).
    """

    schedule: str = "epochs"
    every: int = 1
    num_probes: int = 20
    at_start: bool = True
    max_step: int | None = None
    points: ProbeSchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check(self.schedule in SCHEDULES, "unknown Hessian probe schedule", self.schedule,
              "Use 'epochs', 'steps' or 'log_steps'.")
        check(self.max_step is None or self.max_step >= 1, "max_step must be >= 1", self.max_step,
              "Leave it unset to use the trainer's total number of steps.")
        log = self.schedule == "log_steps"
        points = ProbeSchedule("log" if log else "every", self.every, self.num_probes, at_start=self.at_start,
                               at_end=log)
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

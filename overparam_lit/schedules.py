"""When probes run: the schedule shared by the Hessian and decision-region callbacks (no Lightning).

A schedule is resolved once the length of training is known (after every callback's ``setup``,
so an IMP callback that lengthens training is counted whatever the order of the config
fragments): it becomes a set of points in the schedule's unit (optimizer steps or completed
epochs) at which the probe runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overparam_lit.utils import check

KINDS = ("every", "log", "list")


def log_spaced(last: int, num: int) -> list[int]:
    """About ``num`` distinct integers in ``[1, last]``, evenly spaced in log scale."""
    if last < 1:
        return []
    raw = np.geomspace(1, last, num=max(int(num), 1))
    return sorted({int(round(s)) for s in raw})


@dataclass(frozen=True)
class ProbeSchedule:
    """Points of a probe schedule.

    Args:
        kind: ``every`` (multiples of ``every``), ``log`` (``num`` log-spaced points up to the
            end: dense early, sparse late) or ``list`` (the given ``points``).
        every: period of ``every``.
        num: points of ``log`` (before duplicates merge).
        points: the points of ``list``.
        at_start: include point 0 (the initial network).
        at_end: include the last point (the end of training).
    """

    kind: str = "log"
    every: int = 1
    num: int = 8
    points: tuple[int, ...] | None = None
    at_start: bool = True
    at_end: bool = True

    def __post_init__(self) -> None:
        check(self.kind in KINDS, "unknown probe schedule", self.kind, f"Use one of {KINDS}.")
        check(isinstance(self.every, int) and self.every >= 1,
              "the schedule's period must be an integer >= 1",
              self.every, "Probe every N epochs or steps with N >= 1.")
        check(isinstance(self.num, int) and self.num >= 1, "the number of log-spaced probes must be >= 1",
              self.num, "Use e.g. 8.")
        if self.kind == "list":
            check(bool(self.points), "a 'list' schedule needs its points", self.points,
                  "List the epochs or steps to probe, e.g. [0, 1, 10, 100].")
        if self.points is not None:
            check(all(isinstance(p, int) and p >= 0 for p in self.points),
                  "schedule points must be integers >= 0", list(self.points), "List e.g. [0, 1, 10].")

    def resolve(self, last: int | None) -> set[int]:
        """The points up to ``last`` (the end of training in the schedule's unit); ``last`` may be
        ``None`` only for ``list`` schedules."""
        if self.kind == "list":
            chosen = set(self.points or ())
        else:
            check(last is not None and last >= 1,
                  "the probe schedule needs the length of training (trainer.max_epochs or max_steps)",
                  last, "Set --trainer.max_epochs, or give the callback an explicit list of points.")
            assert last is not None
            chosen = set(log_spaced(last, self.num)) if self.kind == "log" else \
                set(range(self.every, last + 1, self.every))
            if self.at_end:
                chosen.add(int(last))
        if self.at_start:
            chosen.add(0)
        return chosen

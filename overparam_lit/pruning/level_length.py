"""How long a level of iterative magnitude pruning runs, in epochs or in optimizer steps.

:class:`LevelLength` is the part of :class:`~overparam_lit.pruning.levels.ImpLevels` that fixes
the length of one level from the options and the trainer's limits, and says at which epoch or
step the current level ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from overparam_lit.pruning.schedule import SparsitySchedule
from overparam_lit.utils import check

if TYPE_CHECKING:
    from overparam_lit.pruning.imp import ImpOptions


class LevelLength:
    """The length of a level and the level boundaries of
    :class:`~overparam_lit.pruning.levels.ImpLevels` (whose fields it reads)."""

    schedule: SparsitySchedule
    level: int
    history: list[dict[str, Any]]
    epochs_per_level: int | None
    steps_per_level: int | None

    def resolve_epochs(self, max_epochs: int | None, max_steps: int | None, opts: ImpOptions) -> str | None:
        """Fix the length of one level, unless restored: ``opts.steps_per_level`` or, without
        ``epochs_per_level``, the trainer's ``max_steps`` (levels in optimizer steps); else
        ``opts.epochs_per_level`` or the trainer's ``max_epochs``. Returns a note when the fit's
        ``max_epochs``/``max_steps`` change."""
        if self.steps_per_level is None and self.epochs_per_level is None and (
                opts.steps_per_level is not None
                or (opts.epochs_per_level is None and max_steps not in (None, -1))):
            self.steps_per_level = int(opts.steps_per_level or max_steps)  # type: ignore[arg-type]
            if max_steps not in (None, -1, self.steps_per_level, self.total_steps):
                return (f"IMP sets max_steps to {self.total_steps} "
                        f"({self.schedule.levels + 1} levels x {self.steps_per_level} steps).")
            return None
        if self.steps_per_level is not None:
            return None
        note = None
        if self.epochs_per_level is None:
            epl = opts.epochs_per_level if opts.epochs_per_level is not None else max_epochs
            check(epl is not None and epl >= 1,
                  "IMP needs the epochs of one level: trainer.max_epochs is unset", max_epochs,
                  "Set trainer.max_epochs (epochs per level) or the callback's epochs_per_level.")
            self.epochs_per_level = int(epl)
            if max_epochs not in (None, -1, self.epochs_per_level, self.total_epochs):
                note = (f"IMP sets max_epochs to {self.total_epochs} "
                        f"({self.schedule.levels + 1} levels x {self.epochs_per_level} epochs).")
        check(max_steps in (None, -1), "IMP levels are set in epochs, but trainer.max_steps is set too",
              max_steps, "Remove trainer.max_steps (IMP sets max_epochs = levels x epochs), or measure "
              "levels in steps: remove epochs_per_level and set max_steps or steps_per_level per level.")
        return note

    @property
    def total_steps(self) -> int:
        """``(levels + 1) * steps_per_level`` once resolved (levels in steps)."""
        assert self.steps_per_level is not None
        return (self.schedule.levels + 1) * self.steps_per_level

    def steps_of_level(self, num_batches: float, accumulate: int) -> int | None:
        """Optimizer steps of one level (``None``: an epoch of unknown length)."""
        if self.steps_per_level is not None:
            return self.steps_per_level
        if num_batches == float("inf"):
            return None
        return int(self.epochs_per_level or 0) * -(-int(num_batches) // max(1, accumulate))

    def due_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (about to be taken) belongs to a later level (levels in
        steps only)."""
        spl = self.steps_per_level
        return spl is not None and self.level < self.schedule.levels and step // spl > self.level

    def next_boundary(self, step: int) -> int | None:
        """The first level boundary after step ``step`` (levels in steps only)."""
        spl = self.steps_per_level
        if spl is None:
            return None
        nxt = (step // spl + 1) * spl
        return nxt if nxt < self.total_steps else None

    @property
    def total_epochs(self) -> int:
        """``(levels + 1) * epochs_per_level`` once resolved (-1, no limit, for levels in steps)."""
        if self.steps_per_level is not None:
            return -1
        assert self.epochs_per_level is not None
        return (self.schedule.levels + 1) * self.epochs_per_level

    def check_rewind_step(self, num_batches: float, accumulate: int, opts: ImpOptions) -> None:
        """Refuse a ``rewind_step`` past the end of a level of ``num_batches`` batches per epoch."""
        per_level = self.steps_of_level(num_batches, accumulate)
        if per_level is not None:
            check(opts.rewind_step <= per_level, "rewind_step is past the end of a level", opts.rewind_step,
                  f"A level has {per_level} optimizer steps; choose rewind_step <= {per_level}.")

    def due(self, epoch: int) -> bool:
        """Whether training epoch ``epoch`` (0-based, about to start) belongs to a later level
        (levels in epochs only)."""
        if self.steps_per_level is not None:
            return False
        assert self.epochs_per_level is not None
        return epoch // self.epochs_per_level > self.level

    def unfinished(self, epochs_done: int, steps_done: int = 0) -> bool:
        """Whether the current level has run all its epochs (or steps) but has no record yet."""
        done = {h["level"] for h in self.history}
        if self.steps_per_level is not None:
            return steps_done >= (self.level + 1) * self.steps_per_level and self.level not in done
        assert self.epochs_per_level is not None
        return epochs_done >= (self.level + 1) * self.epochs_per_level and self.level not in done

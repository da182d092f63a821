"""The rewind point of iterative magnitude pruning (no Lightning).

:class:`Rewinding` is the part of :class:`~overparam_lit.pruning.levels.ImpLevels` that takes the
state a later level restarts from (step ``rewind_step`` of level 0, or the initial state) and sets
a model back to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from overparam_lit.pruning.tickets import load_state_, module_state
from overparam_lit.utils import check

if TYPE_CHECKING:
    from overparam_lit.pruning.imp import ImpOptions


class Rewinding:
    """The rewind snapshot of :class:`~overparam_lit.pruning.levels.ImpLevels` (whose fields it reads)."""

    level: int
    snapshot: dict[str, Tensor] | None

    def wants_snapshot(self, step: int, opts: ImpOptions) -> bool:
        """Whether the state after optimizer step ``step`` is the rewind point not yet taken: step
        ``rewind_step`` of level 0 (rewind ``weights``), or the initial state for every mode."""
        return (self.level == 0 and self.snapshot is None and step == opts.rewind_step
                and (opts.rewind == "weights" or step == 0))

    def initial_start(self, module: nn.Module, step: int, opts: ImpOptions) -> dict[str, Tensor] | None:
        """At the very start of a fit (level 0, step 0) the state level 0 starts from, having taken
        it as the rewind point if that is the initial state; ``None`` later (a resumed fit)."""
        if self.level != 0 or step != 0:
            return None
        if self.wants_snapshot(0, opts):
            self.snapshot = module_state(module)
        return module_state(module)

    def rewind_(self, module: nn.Module, opts: ImpOptions) -> dict[str, Tensor]:
        """Set ``module`` to the start of the next level and return that state (``rewind.pt``): the
        rewind point for rewind ``weights``, else the trained weights as they are."""
        if opts.rewind != "weights":
            return module_state(module)
        check(self.snapshot is not None, "the rewind step was never reached in level 0",
              opts.rewind_step, "Choose a rewind_step within the first level.")
        load_state_(module, self.snapshot)
        return self.snapshot

"""Sparsity schedules of iterative magnitude pruning: the density kept at each level."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from overparam_lit.pruning.masks import kept_count
from overparam_lit.utils import check

SCHEDULES = ("geometric", "linear", "list")


@dataclass(frozen=True)
class SparsitySchedule:
    """Density of the prunable weights at levels ``0..levels`` (level 0 is dense).

    - ``geometric``: level ``L`` keeps ``(1 - fraction) ** L`` (Frankle & Carbin: prune
      ``fraction`` of the remaining weights per level);
    - ``linear``: sparsity grows linearly to ``1 - final_density`` at the last level;
    - ``list``: the given ``densities`` of levels ``1..levels`` (non-increasing, in ``(0, 1]``).

    Densities are fractions of the *original* prunable entries, so rounding never accumulates.
    """

    levels: int
    kind: str = "geometric"
    fraction: float = 0.2
    final_density: float | None = None
    densities: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check(self.kind in SCHEDULES, "unknown sparsity schedule", self.kind, f"Use one of {SCHEDULES}.")
        if self.kind == "list":
            dens = list(self.densities or [])
            check(bool(dens), "a 'list' sparsity schedule needs its densities", self.densities,
                  "Set densities to the kept fraction of levels 1, 2, ..., e.g. [0.5, 0.25, 0.1].")
            check(all(isinstance(d, (int, float)) and 0 < d <= 1 for d in dens),
                  "every density of the schedule must lie in (0, 1] (a density of 0 prunes everything)",
                  dens, "Use kept fractions such as [0.5, 0.25, 0.1].")
            check(all(b <= a for a, b in zip(dens, dens[1:], strict=False)),
                  "the schedule's densities must not increase from level to level", dens,
                  "IMP only removes weights; list the densities in decreasing order.")
            check(self.levels == len(dens), "levels does not match the number of listed densities",
                  (self.levels, len(dens)), f"Set levels to {len(dens)} (one per listed density).")
            return
        check(isinstance(self.levels, int) and self.levels >= 1, "IMP levels must be an integer >= 1",
              self.levels, "Set levels to the number of pruning rounds after the dense level 0, e.g. 3.")
        if self.kind == "geometric":
            check(isinstance(self.fraction, (int, float)) and 0.0 < self.fraction < 1.0,
                  "IMP fraction must lie strictly between 0 and 1", self.fraction,
                  "Set fraction to the share of remaining weights pruned per level, e.g. 0.2.")
        else:
            fd = self.final_density
            check(isinstance(fd, (int, float)) and 0.0 < fd < 1.0,
                  "a 'linear' schedule needs final_density strictly between 0 and 1", fd,
                  "Set final_density to the kept fraction at the last level, e.g. 0.1.")

    def density(self, level: int) -> float:
        """Kept fraction at ``level`` (1 at level 0)."""
        check(0 <= level <= self.levels, "level outside the schedule", level, f"Use 0..{self.levels}.")
        if level == 0:
            return 1.0
        if self.kind == "geometric":
            return (1.0 - self.fraction) ** level
        if self.kind == "linear":
            assert self.final_density is not None
            return 1.0 - (1.0 - self.final_density) * level / self.levels
        assert self.densities is not None
        return float(self.densities[level - 1])

    def all(self) -> list[float]:
        """Densities of levels ``0..levels``."""
        return [self.density(level) for level in range(self.levels + 1)]

    def check_counts(self, numel: Mapping[str, int] | Sequence[Mapping[str, int]], layerwise: bool) -> None:
        """Refuse a schedule that keeps no weight at its last level (in the global pool, or in a
        layer when ``layerwise``) for any of the given per-layer counts (one mapping per member)."""
        counts = [numel] if isinstance(numel, Mapping) else list(numel)
        last = self.density(self.levels)
        for c in counts:
            pools = [[n] for n in c] if layerwise else [list(c)]
            for pool in pools:
                total = sum(c[n] for n in pool)
                check(kept_count(total, last) >= 1,
                      f"the sparsity schedule keeps no weight at level {self.levels} "
                      f"({total} prunable weights at density {last:.3g})", pool if layerwise else total,
                      "Use fewer levels, a smaller fraction or a larger final density.")

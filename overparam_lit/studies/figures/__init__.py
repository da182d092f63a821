"""Figures of finished run folders and sweeps: one function each, returning the numbers it draws.

Every figure function is ``figure(source, out=None, **options) -> dict``: ``source`` is a sweep
folder (``overparam-lit sweep --out``), a run folder or any folder of runs; the picture goes to
``out`` (default ``SOURCE/figures/<name>.png``) with its numbers beside it as ``.json``; the
returned dictionary is what ``overparam-lit plot`` prints as one JSON line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overparam_lit.studies.figures import (
    double_descent,
    hessian,
    lottery,
    lottery_ablation,
    regions,
    spectra,
    success,
    ticket_perturb,
    widen,
)
from overparam_lit.studies.runs import run_folders
from overparam_lit.utils import ConfigError, check


def _has(marker: str) -> Callable[[list[Path]], bool]:
    return lambda runs: any((run / marker).is_dir() for run in runs)


def _teacher(runs: list[Path]) -> bool:
    from overparam_lit.studies.figures.common import data_init_args

    return any(data_init_args(r)[0].endswith("TeacherStudent") for r in runs)


def _widths(runs: list[Path]) -> int:
    from overparam_lit.studies.results import member_finals

    return len({m.get("width") for r in runs for m in member_finals(r)})


@dataclass(frozen=True)
class FigureKind:
    """A figure: its ``overparam-lit plot`` name, function, and when ``report`` draws it."""

    name: str
    function: Callable[..., dict[str, Any]]
    applies: Callable[[list[Path]], bool]

    @property
    def help(self) -> str:
        """The first line of the figure module's docstring, without the figure's name."""
        doc = inspect.getdoc(inspect.getmodule(self.function)) or ""
        first = doc.split("\n\n")[0].replace("\n", " ").strip()
        return first.split(": ", 1)[-1].rstrip(".")

    @property
    def options(self) -> dict[str, Any]:
        """The function's options and their defaults (besides ``source`` and ``out``)."""
        params = inspect.signature(self.function).parameters
        return {k: p.default for k, p in params.items() if k not in ("source", "out")}


FIGURES: dict[str, FigureKind] = {f.name: f for f in (
    FigureKind("double-descent", double_descent.figure,
               lambda runs: not _has("imp")(runs) and not _teacher(runs) and _widths(runs) >= 3),
    FigureKind("lottery", lottery.figure, lambda runs: _has("imp")(runs) and not _teacher(runs)),
    FigureKind("lottery-ablation", lottery_ablation.figure,
               lambda runs: any(lottery.control_lift(r) for r in runs)),
    FigureKind("hessian", hessian.figure, lambda runs: _has("hessian")(runs) and not _has("widen")(runs)),
    FigureKind("spectra", spectra.figure,
               lambda runs: _has("hessian")(runs) and not _has("widen")(runs) and _widths(runs) >= 2),
    FigureKind("regions", regions.figure, _has("regions")),
    FigureKind("success", success.figure,
               lambda runs: _teacher(runs) and not _has("imp")(runs) and not _has("widen")(runs)),
    FigureKind("widen", widen.figure, _has("widen")),
    FigureKind("ticket-perturb", ticket_perturb.figure, lambda runs: _has("imp")(runs) and _teacher(runs)),
)}
"""Every figure by its ``overparam-lit plot`` name."""


def figure_kind(name: str) -> FigureKind:
    """The figure called ``name``, or a :class:`ConfigError` listing the names."""
    check(name in FIGURES, "unknown figure", name, f"Use one of {', '.join(FIGURES)}.")
    return FIGURES[name]


def draw(name: str, source: str | Path, out: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Draw figure ``name`` of ``source`` (options as the figure function takes them)."""
    kind = figure_kind(name)
    unknown = sorted(set(options) - set(kind.options))
    check(not unknown, f"figure {name!r} has no such option", unknown,
          f"Its options are {kind.options or 'none'}.")
    return kind.function(source, out, **options)


def figures_for(source: str | Path) -> list[str]:
    """The figures that apply to the runs under ``source``, in registry order."""
    runs = run_folders(source)
    out = []
    for kind in FIGURES.values():
        try:
            if kind.applies(runs):
                out.append(kind.name)
        except (ConfigError, OSError, ValueError):
            continue
    return out


__all__ = ["FIGURES", "FigureKind", "draw", "figure_kind", "figures_for"]

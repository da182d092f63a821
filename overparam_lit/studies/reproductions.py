"""``overparam-lit reproductions DIR ...``: every published number the README or a config quotes,
next to what its study measured.

Each row: the source (paper, figure or notebook), the published value, the study config with its
two commands (sweep, plot), the value measured in the sweep folder with its interval over seeds,
and a verdict: ``reproduced``, ``not reproduced``, ``different protocol`` (with how it differs) or
``not run``. The published numbers are declared once, in :data:`PUBLISHED`; the folders given on
the command line are matched to them by the study config in their ``sweep.json``, and a study
without a folder is listed as ``not run``. The table is Markdown, as the README shows it.

    overparam-lit reproductions runs/*                 # print the table
    overparam-lit reproductions runs/* --out table.md  # write it to a file as well
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.studies.runs import SweepFolder
from overparam_lit.utils import ConfigError, atomic_write_text, check, check_out_file

__all__ = ["PUBLISHED", "Measured", "Published", "build_parser", "interval", "main", "measure_rows",
           "reproductions", "table_markdown", "wilson"]


@dataclass(frozen=True)
class Measured:
    """What a study measured for one published number: one value per seed (or member), how the
    interval over them is drawn (``range``: min-max; ``wilson``: 95% Wilson interval of 0/1
    outcomes) and where it was read (``at``, e.g. ``width 48``)."""

    values: tuple[float, ...]
    kind: str = "range"
    at: str = ""
    note: str = ""


@dataclass(frozen=True)
class Published:
    """One published number and the study that measures it.

    Args:
        claim: what the number is (``noisy test error at h = 16``).
        source: paper, figure or notebook.
        published: the value as quoted (``47%``).
        value: the same value as a number in the unit the study measures (0.47), or ``None``
            for a claim without one number.
        study: the study config (``configs/study_*.yaml``), or ``None`` when no study measures it.
        out: the sweep folder its commands write (``runs/dd``).
        figure: the figure its plot command draws.
        measure: reads the sweep folder and returns a :class:`Measured`.
        tolerance: the measured mean reproduces the value when within this of it, or when the
            interval over seeds holds it.
        protocol: how the study's protocol differs from the source's (empty when it does not);
            any difference makes the verdict ``different protocol``.
        unit: ``percent`` (fractions shown as %), ``count`` or ``rate``.
    """

    claim: str
    source: str
    published: str
    value: float | None
    study: str | None
    out: str = ""
    figure: str = ""
    measure: Callable[[Path], Measured] | None = None
    tolerance: float = 0.0
    protocol: str = ""
    unit: str = "percent"

    def commands(self) -> str:
        """The study's two commands, or what stands in for them."""
        if self.study is None:
            return ""
        return (f"`overparam-lit sweep -c {self.study} --out {self.out}`<br>"
                f"`overparam-lit plot {self.figure} {self.out}`")


# ---- intervals -----------------------------------------------------------------------------------
def wilson(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    check(trials >= 1 and 0 <= successes <= trials, "a Wilson interval needs 0 <= successes <= trials",
          (successes, trials), "Pass counts from at least one trial.")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def interval(m: Measured) -> tuple[float, float, float]:
    """Mean and interval of a :class:`Measured`: min-max over seeds (``range``) or the Wilson
    interval of the successes (``wilson``, values 0 or 1)."""
    v = np.asarray(m.values, dtype=np.float64)
    check(v.size >= 1 and bool(np.all(np.isfinite(v))), "no finite measured value", list(m.values),
          "Check that the sweep finished.")
    if m.kind == "wilson":
        lo, hi = wilson(int(v.sum()), int(v.size))
        return float(v.mean()), lo, hi
    return float(v.mean()), float(v.min()), float(v.max())


# ---- measures ----------------------------------------------------------------------------------
def measure_rows(rows: Iterable[dict[str, Any]], column: str, where: dict[str, Any] | None = None,
                 error: bool = False) -> list[float]:
    """``column`` (``1 - column`` with ``error``) of the finished ``results.csv`` rows that match
    ``where``, one value per row (member)."""
    out = []
    for r in rows:
        if r.get("status", "done") != "done" or not all(_same(r.get(k), v) for k, v in (where or {}).items()):
            continue
        x = r.get(column)
        if x is None or x == "":
            continue
        out.append(1.0 - float(x) if error else float(x))
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _results(folder: Path) -> list[dict[str, Any]]:
    from overparam_lit.studies.figures.common import member_table

    return member_table(folder)


def dd_error(width: float | str, noisy: bool = False) -> Callable[[Path], Measured]:
    """Clean (or noisy) test error of every seed at ``width``: a number, ``peak`` (the width of the
    double-descent figure's peak) or ``widest``."""
    def measure(folder: Path) -> Measured:
        from overparam_lit.studies.figures.double_descent import summarise

        rows = _results(folder)
        numbers = summarise(rows)
        test = numbers["test_split"]
        w = {"peak": numbers["peak_width"], "widest": numbers["last_width"]}.get(str(width), width)
        values = measure_rows(rows, f"{test}/acc_noisy" if noisy else f"{test}/acc", {"width": w}, error=True)
        return Measured(tuple(values), at=f"width {w:g}")
    return measure


def lottery(mode: str, density: float, metric: str = "final") -> Callable[[Path], Measured]:
    """Accuracy (``final`` test accuracy or ``best`` validation accuracy during training) of every
    seed of ``mode`` (``ticket``, ``random_mask``, ...) at the level whose density is nearest to
    ``density`` (1.0: the dense net)."""
    def measure(folder: Path) -> Measured:
        from overparam_lit.studies.figures.lottery import lottery_rows

        rows = [r for r in lottery_rows(folder) if r["mode"] == mode and r[metric] is not None]
        check(bool(rows), f"no {mode} rows", str(folder), "Run the study's controls.")
        d = min({r["density"] for r in rows}, key=lambda x: abs(math.log(x) - math.log(density)))
        values = [r[metric] for r in rows if r["density"] == d]
        return Measured(tuple(values), at=f"density {d:.3g}" + (", best" if metric == "best" else ""))
    return measure


def hessian_outliers(num_classes: int) -> Callable[[Path], Measured]:
    """Outliers above the bulk at every member's last probe, for the members with ``num_classes``
    classes (the Hessian figure's count), with the most any probe showed in the note."""
    def measure(folder: Path) -> Measured:
        from overparam_lit.studies.figures.common import fit_folders
        from overparam_lit.studies.figures.hessian import summarise
        from overparam_lit.studies.runs import hessian_rows

        numbers = summarise([r for run in fit_folders(folder, "hessian") for r in hessian_rows(run)])
        by = numbers["by_classes"].get(str(num_classes))
        check(by is not None, f"no members with {num_classes} classes", str(folder), "Run the study.")
        loss = float(np.mean(by["loss_last"]))
        note = (f"training loss {loss:.2g} at the last probe; the most at any probe: "
                f"{np.mean(by['max']):.1f} (loss {np.mean(by['loss_at_max']):.2g})")
        return Measured(tuple(float(v) for v in by["last"]), at="last probe", note=note)
    return measure


def success(width: int) -> Callable[[Path], Measured]:
    """Teacher-student success (final training loss / target variance < 5e-3) of every seed at
    ``width``, with its Wilson interval."""
    def measure(folder: Path) -> Measured:
        from overparam_lit.studies.figures.success import DEFAULT_THRESHOLD, relative_rows

        rows, _ = relative_rows(folder, [r for r in _results(folder) if _same(r.get("width"), width)])
        check(bool(rows), f"no members of width {width}", str(folder), "Run the study.")
        values = [1.0 if math.isfinite(r["relative_loss"]) and r["relative_loss"] < DEFAULT_THRESHOLD else 0.0
                  for r in rows]
        return Measured(tuple(values), kind="wilson", at=f"width {width}")
    return measure


# ---- the published numbers ---------------------------------------------------------------------
_MNIST1D = "Greydanus 2020 (MNIST-1D), model-wise double descent"
_DD = dict(study="configs/study_mnist1d_double_descent.yaml", out="runs/dd", figure="double-descent",
           tolerance=0.02, protocol="Adam 1e-2 for 200 epochs (paper: SGD 0.01, momentum 0.9), widths 4-128 "
           "(paper: 2-300)")
_NOTEBOOK = "mnist1d notebooks/lottery-tickets.ipynb (max accuracy, 90% sparsity)"
_LOTTERY = dict(study="configs/study_mnist1d_lottery.yaml", out="runs/lottery", figure="lottery",
                tolerance=0.02, protocol="2 x 100 MLP without the residual layer, Adam 1e-2, global "
                "geometric pruning to 81.5% sparsity with biases and output layer kept, final test accuracy")
_NB = dict(study="configs/study_mnist1d_lottery_notebook.yaml", out="runs/lottery_notebook", figure="lottery",
           tolerance=0.02)
_HESSIAN = "Sagun et al. 2017; Papyan 2019: about C outliers near convergence"
_OUTLIERS = dict(study="configs/study_mnist1d_hessian_outliers.yaml", out="runs/hessian_outliers",
                 figure="hessian", tolerance=1.0, unit="count")
_PLAIN = "earlier plain loop of this project (10^4 samples, 4000 steps)"
_SUCCESS = dict(study="configs/study_teacher_student_success.yaml", out="runs/success", figure="success",
                tolerance=0.0, unit="rate", protocol="2000 samples, 1500 steps")

PUBLISHED: tuple[Published, ...] = (
    Published("test error at h = 16", _MNIST1D, "about 47%", 0.47, measure=dd_error(16), **_DD),
    Published("test error at the peak (h = 47-61, where train error reaches 0)", _MNIST1D, "about 54%", 0.54,
              measure=dd_error("peak"), **_DD),
    Published("test error of the widest net (h = 300)", _MNIST1D, "about 45.5%", 0.455,
              measure=dd_error("widest"), **_DD),
    Published("ticket at 90% sparsity", _NOTEBOOK, "74.2%", 0.742, measure=lottery("ticket", 0.1, "best"),
              **_NB),
    Published("dense", _NOTEBOOK, "65.9%", 0.659, measure=lottery("ticket", 1.0, "best"), **_NB),
    Published("random pruning at 90% sparsity", _NOTEBOOK, "65.2%", 0.652,
              measure=lottery("random_prune", 0.1, "best"), **_NB),
    Published("ticket at 90% sparsity", _NOTEBOOK, "74%", 0.742, measure=lottery("ticket", 0.1), **_LOTTERY),
    Published("dense", _NOTEBOOK, "66%", 0.659, measure=lottery("ticket", 1.0), **_LOTTERY),
    Published("random pruning at 90% sparsity", _NOTEBOOK, "65%", 0.652, measure=lottery("random_mask", 0.1),
              **_LOTTERY),
    Published("Hessian outliers, C = 10 (SGD to training loss 0.4)", _HESSIAN, "about 10 (C or C - 1)", 10.0,
              study="configs/study_mnist1d_hessian.yaml", out="runs/hessian", figure="hessian",
              measure=hessian_outliers(10), tolerance=1.0, unit="count",
              protocol="stops at training loss 0.4, not near convergence"),
    *(Published(f"Hessian outliers, C = {c} (to near-zero training loss)", _HESSIAN,
                f"about {c} (C or C - 1)", float(c), measure=hessian_outliers(c), **_OUTLIERS)
      for c in (10, 5, 3)),
    *(Published(f"teacher-student success at width {w}", _PLAIN, f"{k}/50", k / 50, measure=success(w),
                **_SUCCESS) for w, k in ((4, 30), (5, 40), (6, 42), (8, 50))),
    Published("MLP 2 x 100 test accuracy", "Greydanus 2020 (MNIST-1D)", "about 68%", 0.68, None,
              protocol="configs/mnist1d_mlp.yaml is a single fit, no study"),
    Published("CNN test accuracy", "Greydanus 2020 (MNIST-1D)", "about 94%", 0.94, None,
              protocol="configs/mnist1d_cnn.yaml is a single fit, no study"),
    Published("LeNet-300-100 winning tickets", "Frankle & Carbin 2019", "density 3.6-21%", None, None,
              protocol="configs/mnist_lenet_300_100_imp.yaml is a single fit and needs the MNIST files"),
)
"""Every published number the README or a config quotes, with the study that measures it."""


# ---- the table ---------------------------------------------------------------------------------
def _fmt(x: float, unit: str) -> str:
    if unit == "percent":
        return f"{100 * x:.1f}%"
    if unit == "rate":
        return f"{x:.2f}"
    return f"{x:.1f}"


def _study_of(folder: Path) -> set[str]:
    try:
        spec = SweepFolder(folder).read_spec()
    except ConfigError:
        return set()
    return {Path(c).name for c in spec.get("configs", [])}


def verdict(entry: Published, mean: float, lo: float, hi: float) -> str:
    """``reproduced`` / ``not reproduced``, or ``different protocol`` with how it differs and
    whether the value still falls within the tolerance."""
    if entry.value is None:
        return "measured"
    close = abs(mean - entry.value) <= entry.tolerance or lo <= entry.value <= hi
    if entry.protocol:
        return f"different protocol ({entry.protocol}); {'matches' if close else 'differs'}"
    return "reproduced" if close else "not reproduced"


def reproductions(folders: Sequence[str | Path], entries: Sequence[Published] = PUBLISHED
                  ) -> list[dict[str, str]]:
    """One row per entry: ``claim``, ``source``, ``published``, ``study``, ``measured``,
    ``verdict`` (and ``mean``, ``lo``, ``hi``, ``seeds`` when measured)."""
    by_study: dict[str, Path] = {}
    for f in folders:
        for name in _study_of(Path(f)):
            by_study.setdefault(name, Path(f))
    rows = []
    for e in entries:
        row = {"claim": e.claim, "source": e.source, "published": e.published,
               "study": e.commands() if e.study else "none", "measured": ""}
        folder = by_study.get(Path(e.study).name) if e.study else None
        if e.study is None:
            row["verdict"] = f"not run: {e.protocol}"
        elif folder is None or e.measure is None:
            row["verdict"] = "not run"
        elif not SweepFolder(folder).results.is_file():
            row["verdict"] = f"not run (no results.csv in {folder}: the sweep has not finished)"
        else:
            try:
                m = e.measure(folder)
                mean, lo, hi = interval(m)
            except (ConfigError, OSError, ValueError, KeyError) as err:
                row["verdict"] = f"not run ({str(err).split('. ')[0]})"
            else:
                spread = "Wilson 95%" if m.kind == "wilson" else "min-max"
                row["measured"] = (f"{_fmt(mean, e.unit)} [{_fmt(lo, e.unit)}, {_fmt(hi, e.unit)}] "
                                   f"({spread}, {len(m.values)} seeds; {m.at})")
                row["verdict"] = verdict(e, mean, lo, hi) + (f"; {m.note}" if m.note else "")
                row.update(mean=repr(mean), lo=repr(lo), hi=repr(hi), seeds=str(len(m.values)))
        rows.append(row)
    return rows


def table_markdown(rows: Sequence[dict[str, str]]) -> str:
    """The rows as a Markdown table."""
    cols = ("claim", "source", "published", "study", "measured", "verdict")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(r.get(c, "").replace("|", "/") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The ``overparam-lit reproductions`` argument parser."""
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="overparam-lit reproductions", description=doc.split("\n\n")[0],
                                epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, help="sweep folders (those of other studies are ignored)")
    p.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the reproductions table (and write it with ``--out``)."""
    args = build_parser().parse_args(argv)
    missing = [str(f) for f in args.folders if not Path(f).is_dir()]
    check(not missing, "sweep folder(s) not found", missing,
          "Give the --out folders of `overparam-lit sweep` (a study that has not run is listed as not run).")
    if args.out is not None:
        check_out_file(args.out, "Give --out a file in a folder you can write to.")
    text = table_markdown(reproductions(args.folders, PUBLISHED))
    if args.out is not None:
        atomic_write_text(text, args.out)
    print(text, end="")
    return 0

"""``overparam-lit plot FIGURE DIR [--out PNG]``: draw one figure of finished run folders or a sweep
folder and print its numbers as one JSON line.

    overparam-lit plot double-descent runs/dd          # runs/dd/figures/double_descent.png (+ .json)
    overparam-lit plot runs/dd                         # the sweep's own figure (its block's `figure`)
    overparam-lit plot success runs/ts -o threshold=1e-3 --out docs/figures/escape_success.png
    overparam-lit plot --list                          # every figure and its options
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from overparam_lit.studies.figures import FIGURES, draw
from overparam_lit.studies.grid import parse_value
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.utils import ConfigError, check, check_out_file

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``overparam-lit plot`` argument parser."""
    lines = [f"  {k:15s} {v.help}; options {v.options}" for k, v in FIGURES.items()]
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="overparam-lit plot", description=doc.split("\n\n")[0],
                                epilog=doc.split("\n\n", 1)[1] + "\nfigures:\n" + "\n".join(lines),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", nargs="?", help=f"one of {', '.join(FIGURES)} (default: the sweep's figure)")
    p.add_argument("source", nargs="?", type=Path, help="sweep folder, run folder or folder of runs")
    p.add_argument("--out", type=Path, help="picture path (default: SOURCE/figures/<figure>.png)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a figure option, e.g. -o threshold=0.005 (repeatable)")
    p.add_argument("--list", action="store_true", help="list the figures and their options")
    return p


def _option(text: str) -> tuple[str, object]:
    """A ``-o KEY=VALUE`` figure option (``-o threshold=0.005``)."""
    key, _, value = text.partition("=")
    check("=" in text and key.strip().isidentifier(), "a figure option (-o) is not KEY=VALUE", text,
          "Write e.g. -o threshold=0.005 (overparam-lit plot --list names each figure's options).")
    return key.strip(), parse_value(value.strip())


def main(argv: list[str] | None = None) -> int:
    """Draw the figure, print its numbers as one JSON line; bad input raises ``ConfigError``."""
    args = build_parser().parse_args(argv)
    if args.list:
        for name, kind in FIGURES.items():
            print(f"{name}: {kind.help}. Options: {kind.options}")
        return 0
    name, source = args.figure, args.source
    if source is None and name is not None and name not in FIGURES and Path(name).is_dir():
        name, source = None, Path(name)
    check(source is not None, "no folder given", argv, "Write overparam-lit plot FIGURE DIR.")
    check(Path(source).is_dir(), "run or sweep folder not found", str(source),
          "Give a folder that `overparam-lit sweep` or `overparam-lit fit` wrote.")
    if name is None:
        name = SweepFolder(source).read_spec().get("figure")
        check(bool(name), "no figure given and the folder names none", str(source),
              f"Write overparam-lit plot FIGURE {source} with FIGURE one of {', '.join(FIGURES)}.")
    options = dict(_option(o) for o in args.option)
    if args.out is None:
        check_output(Path(source) / SweepFolder.FIGURES, folder=True)
    else:
        check_output(args.out if args.out.suffix else args.out.with_suffix(".png"))  # as the figures name it
    try:
        summary = draw(name, source, args.out, **options)
    except OSError as err:
        where = err.filename or args.out or source
        raise ConfigError(f"the figure could not be drawn: {err.strerror or err} (got {str(where)!r}). "
                          "Check that the folder can be read and that --out names a file in a folder "
                          "you can write to.") from None
    print(json.dumps(summary))
    return 0


def check_output(path: str | Path, folder: bool = False) -> None:
    """Refuse, before anything is drawn, an output that cannot be written: ``path`` (a picture)
    must not be a folder and its folder must exist and be writable; with ``folder``, ``path`` is
    the folder the pictures go to (made if missing inside a writable folder)."""
    path = Path(path)
    if folder:
        fix = "Give --out a picture path in a folder you can write to, e.g. --out figure.png."
        check(not path.exists() or path.is_dir(), "the figures folder is a file", str(path), fix)
        parent = path if path.is_dir() else path.parent
        check(parent.is_dir() and os.access(parent, os.W_OK | os.X_OK), "the figures cannot be written there",
              str(path), fix)
        return
    check_out_file(path, "Give --out a picture path in an existing folder you can write to (default: "
                   "SOURCE/figures/).")

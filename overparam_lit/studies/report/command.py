"""The ``overparam-lit report`` command: its parser (whose help is the package docstring) and entry."""

from __future__ import annotations

import argparse
from pathlib import Path

from overparam_lit.studies.report.page import write_report


def build_parser() -> argparse.ArgumentParser:
    """The ``overparam-lit report`` argument parser."""
    from overparam_lit.studies import report  # its docstring documents the command

    doc = report.__doc__ or ""
    p = argparse.ArgumentParser(prog="overparam-lit report", description=doc.split("\n\n")[0],
                                epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="sweep folder (or any folder of runs)")
    p.add_argument("--out", type=Path, help="HTML file (default: SOURCE/report.html)")
    p.add_argument("--no-figures", action="store_true", help="use the figures already drawn, draw nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write the report and print where it is."""
    args = build_parser().parse_args(argv)
    path = write_report(args.source, args.out, not args.no_figures)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0

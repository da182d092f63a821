"""The ``overparam-lit sweep`` command: its parser (whose help is the package docstring) and
:func:`main`, which runs, prints, collects or writes W&B sweep files."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path

from overparam_lit.studies.spec import PACK_MODES
from overparam_lit.studies.sweep.planned import Sweep
from overparam_lit.utils import ConfigError, OneLineParser

EXAMPLE = "overparam-lit sweep -c configs/study_mnist1d_double_descent.yaml --out runs/dd"


def build_parser() -> argparse.ArgumentParser:
    """The ``overparam-lit sweep`` argument parser."""
    from overparam_lit.studies import sweep  # its docstring documents the command

    doc = sweep.__doc__ or ""
    p = OneLineParser(example=EXAMPLE, prog="overparam-lit sweep", description=doc.split("\n\n")[0],
                                epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", action="append", default=[],
                   help="config file (repeatable, in order); one of them holds the sweep block")
    p.add_argument("--out", type=Path, help="sweep folder (required)")
    p.add_argument("--name", help="sweep name and W&B group (default: the block's name or the folder's)")
    p.add_argument("--set", action="append", default=[], metavar="[STAGE:]KEY=VALUE", dest="fixed",
                   help="a fixed fit argument for every fit (of every stage, or of STAGE only); repeatable")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="replace or add an axis of the main grid (repeatable)")
    p.add_argument("--pack", choices=PACK_MODES, help="override the block's packing (every stage)")
    p.add_argument("--width-groups", metavar="GROUPS",
                   help="override width_groups: a YAML list such as '[[4, 8], [16, 32]]', or 'one' for "
                        "every width in one fit (on a GPU small members are nearly free)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel local fits (default: the block's workers, one per GPU, or 2 on a CPU)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit option, e.g. partition=gpu, gpus_per_node=1, timeout_min=600, "
                        "signal_delay_s=120 (the pre-timeout signal), max_num_timeout=50 (requeues "
                        "after a time limit) (repeatable)")
    p.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # submitit cluster (tests: debug/local)
    p.add_argument("--launch", choices=("fork", "process"), default=None,
                   help="how a local fit starts: 'fork' (default on Linux without GPUs) forks each fit "
                        "from a worker that imported torch, Lightning and the CLI once; 'process' starts "
                        "each fit as a new `python -m overparam_lit fit` process (start-up and imports "
                        "every time)")
    p.add_argument("--retries", type=int, default=1, help="extra attempts of a failing fit")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a local attempt is killed")
    p.add_argument("--fresh", action="store_true", help="start interrupted fits over instead of resuming")
    p.add_argument("--fit", action="append", default=[], metavar="NAME",
                   help="run only this fit (repeatable; the fits it refers to must be done)")
    p.add_argument("--dry-run", action="store_true", help="print every fit's command and stop")
    p.add_argument("--collect", action="store_true", help="only rewrite results.csv and fits.csv")
    p.add_argument("--wandb-sweep", action="store_true", help="write W&B sweep files instead of running")
    return p


def main(argv: list[str] | None = None) -> int:
    """``overparam-lit sweep``: see :mod:`overparam_lit.studies.sweep`. Bad input raises
    :class:`ConfigError`."""
    top_level = argv is None or list(sys.argv[1:]) == ["sweep", *argv]  # `overparam-lit sweep ...`
    args = build_parser().parse_args(argv)
    if args.out is None:
        raise ConfigError("--out is missing: the sweep folder that holds the study's fits and results "
                          f"(a new folder, or an earlier sweep's to resume it). Example: {EXAMPLE}")
    sweep = Sweep(args)
    sweep.top_level = top_level
    if args.dry_run:
        for i, fit in enumerate(sweep.selected()):
            deps = f" (after {', '.join(fit.deps)})" if fit.deps else ""
            print(f"{i:4d} [{fit.stage}] {fit.name}: {fit.num_members} member(s), {sweep.status(fit)}{deps}\n"
                  f"     {shlex.join(sweep.command(fit))}")
        return 0
    if args.wandb_sweep:
        sweep.check_folder()
        lock = sweep.lock()
        try:
            sweep.write_spec()
            for path in sweep.write_wandb_sweeps():
                print(f"[sweep] wrote {path}")
        finally:
            if lock is not None:
                lock.release()
        return 0
    if args.collect:
        sweep.check_folder()
        rows = sweep.collect()
        done = sum(sweep.status(f) == "done" for f in sweep.plan.fits)
        print(f"[sweep] {done}/{len(sweep.plan.fits)} fits done; wrote {sweep.folder.results} "
              f"({len(rows)} rows)")
        return 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sweep.stop)
        signal.signal(signal.SIGINT, sweep.stop)
    try:
        return sweep.run()
    finally:
        with contextlib.suppress(ValueError):
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)

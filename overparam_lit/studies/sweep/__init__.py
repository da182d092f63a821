"""``overparam-lit sweep``: run a study's grid of ``overparam-lit fit`` runs, packed into member fits.

    overparam-lit sweep -c configs/study_mnist1d_double_descent.yaml --out runs/dd
    overparam-lit plot double-descent runs/dd

The grid, the packing of seeds and widths into member fits, and later stages that start from an
earlier stage's run folders live in the study config's ``sweep:`` block
(:mod:`overparam_lit.studies.spec`). Every fit is an ordinary ``overparam-lit fit -c CONFIG ...``
with its own run folder ``OUT/points/<fit>/`` and ``--wandb.group <sweep name>``.

- **Local** (default): ``--workers`` processes (default: one per GPU, each seeing only its GPU;
  without GPUs two, or one on a single core), largest fits first; a fit of a later stage starts
  once the fits it refers to are done. On Linux without GPUs (``--launch fork``) each worker has
  imported torch, Lightning and the CLI once and forks a child per fit, which starts like a new
  process (random state, threads, signals, its log), so start-up is paid once per worker, not per
  fit; ``--launch process`` starts each fit as a new ``python -m overparam_lit fit``.
- **SLURM** (``--executor slurm``): each fit is a submitit job (``submitit.AutoExecutor`` running a
  :class:`FitJob`); ``--slurm KEY=VALUE`` passes options through (``partition=gpu``,
  ``gpus_per_node=1``, ``timeout_min=600``, ``signal_delay_s=120``, ...). The sweep waits for each
  stage's jobs (their ``squeue`` state) before it submits the next stage. A job that reaches its
  time limit or is preempted gets submitit's pre-timeout signal, its fit stops with exit code 75
  and the job is requeued (submitit's checkpoint protocol); the requeued job resumes the fit from
  its last checkpoint. A cancelled job (``scancel``) is reported as ``cancelled``. SIGTERM or
  Ctrl-C to the sweep cancels its queued and running jobs (their fits keep their checkpoints) and
  ends it; a rerun resumes them.
- **Resumable**: a fit whose folder holds ``done.json`` is skipped; an interrupted fit resumes from
  its newest intact checkpoint (``--ckpt_path``, chosen by ``RunFolder.resume_checkpoint``); one
  that left a run without a checkpoint starts over (``--overwrite true``). A failing fit is retried
  ``--retries`` times, except on bad input (exit code 2) or a diverged loss (exit code 3). A fit
  that ends while the sweep stops (SIGTERM, Ctrl-C) is not recorded as done, even when Lightning
  ended it with exit code 0: a rerun resumes it. A fit that exits 75 (stopped by a signal from
  outside, its folder resumable) is ``stopped``, not retried: a rerun resumes it. The sweep's exit
  code: 0 when every fit is done, 1 when one failed, 75 when fits were stopped or cancelled from
  outside, 130 when the sweep itself was stopped.
- **One sweep per folder**: a sweep holds ``OUT/sweep.lock`` while it runs, and a second sweep on the
  folder is refused (naming the process that holds it); a ``--fit`` run only checks that no whole
  sweep runs there. A folder that holds another study's sweep (another plan in ``sweep.json``) or one
  fit's run is refused too: a new ``--out`` starts a new study.
- **Bad input ends before the first fit**: every fit that is to run is built through the fit's own
  parser and constructors (no training, nothing written), and a grid point that ``overparam-lit fit``
  would refuse (``width 0``, ``lr -1``, a misspelt key) ends the sweep with one message and exit 2.
- ``OUT/results.csv``: one row per member of every fit (its grid values, with ``seed`` and
  ``width`` from ``members.csv``, the fit's status and the member's final metrics);
  ``OUT/fits.csv``: one row per fit. ``--collect`` only rewrites both.
- ``--dry-run`` prints every fit's command; ``--wandb-sweep`` writes a W&B sweep file per stage
  (each W&B run is ``overparam-lit sweep ... --fit NAME``).
- ``--set KEY=VALUE`` adds a fixed argument to every fit (``--set trainer.max_epochs=2`` for a
  reduced run), ``--set STAGE:KEY=VALUE`` to the fits of one stage; ``--grid KEY=v1,v2`` replaces
  or adds a grid axis (of the stages that have the key, else of the main one); ``--pack`` and
  ``--width-groups`` override packing (``--width-groups one``: every width in one fit, for GPUs).
  A config without a ``sweep:`` block needs ``--grid``.
"""

# One module per job (this docstring is the command's --help): command (the parser and main), planned
# (the Sweep: options, plan, status, lock and run), preflight (bad input refused before the first fit),
# local (the local workers), fork_server and fit_process (fits forked from a worker that imported
# once), slurm (submitit jobs), outputs (sweep.json, results.csv, fits.csv, W&B sweep files) and
# folder (resume arguments, the sweep folder's lock). A name is looked up in the module that defines
# it: patch it there.
from overparam_lit.studies.grid import DONE_FILE
from overparam_lit.studies.sweep.command import EXAMPLE, build_parser, main
from overparam_lit.studies.sweep.folder import SweepLock, resume_args
from overparam_lit.studies.sweep.fork_server import FIT_PREFIX, fork_available
from overparam_lit.studies.sweep.local import BAD_INPUT, visible_gpus
from overparam_lit.studies.sweep.planned import Sweep
from overparam_lit.studies.sweep.preflight import fit_problems
from overparam_lit.studies.sweep.slurm import (
    CANCEL_WAIT_S,
    MAX_TIMEOUTS,
    SLURM_ACTIVE,
    SLURM_FINAL,
    FitJob,
    slurm_states,
)

__all__ = [
    "BAD_INPUT", "CANCEL_WAIT_S", "DONE_FILE", "EXAMPLE", "FIT_PREFIX", "MAX_TIMEOUTS", "SLURM_ACTIVE",
    "SLURM_FINAL", "FitJob", "Sweep", "SweepLock", "build_parser", "fit_problems", "fork_available", "main",
    "resume_args", "slurm_states", "visible_gpus",
]

"""Studies across runs: sweeps of fits, reading run folders, figures and reports (no Lightning).

- :mod:`~overparam_lit.studies.spec`: the ``sweep:`` block of a study config and the plan of fits
  (packing seeds and widths into member fits, stages that refer to earlier run folders).
- :mod:`~overparam_lit.studies.sweep`: ``overparam-lit sweep``: runs the plan locally or through
  submitit (SLURM), resumable, and writes ``results.csv`` (one row per member).
- :mod:`~overparam_lit.studies.results` and :mod:`~overparam_lit.studies.runs`: final metrics,
  members, and the study artifacts (IMP levels, ticket results, Hessian probes, region snapshots,
  widening records) of run folders, read through :class:`~overparam_lit.runfolder.RunFolder`.
- :mod:`~overparam_lit.studies.figures`: one function per figure (``overparam-lit plot``), each
  returning the numbers it prints; :mod:`~overparam_lit.studies.report`: the HTML report.

Nothing here imports Lightning: a sweep's own process only starts ``overparam-lit fit`` runs.
"""

from overparam_lit.utils import lazy_exports

lazy_exports(__name__, {  # each name loads with its submodule on first use
    "grid": ("DONE_FILE", "cli_text", "parse_grid_arg", "parse_set_arg", "parse_value", "point_name"),
    "results": (
        "RESULTS_FILE", "final_metrics", "find_runs", "group_curves", "read_csv_rows", "read_metrics_csv",
        "read_results", "require_dir", "run_config", "run_label", "run_seed", "run_summary", "run_width",
        "series", "write_results",
    ),
    "spec": ("Fit", "Plan", "StudySpec", "make_plan", "parse_sweep_block", "read_study"),
})

__all__ = [
    "DONE_FILE",
    "RESULTS_FILE",
    "Fit",
    "Plan",
    "StudySpec",
    "cli_text",
    "final_metrics",
    "find_runs",
    "group_curves",
    "make_plan",
    "parse_grid_arg",
    "parse_set_arg",
    "parse_sweep_block",
    "parse_value",
    "point_name",
    "read_csv_rows",
    "read_metrics_csv",
    "read_results",
    "read_study",
    "require_dir",
    "run_config",
    "run_label",
    "run_seed",
    "run_summary",
    "run_width",
    "series",
    "write_results",
]

"""Studies across runs: sweep grids and reading run folders (no Lightning imports).

- :mod:`overparam_lit.studies.grid`: parse ``KEY=v1,v2`` grids, name points, build the
  ``overparam-lit fit`` command of a point.
- :mod:`overparam_lit.studies.results`: final metrics of a run folder, the results table
  of a sweep, grouping rows into mean/band curves.
"""

from overparam_lit.studies.grid import (
    DONE_FILE,
    Point,
    check_configs,
    expand_grid,
    fit_command,
    load_grid_file,
    merge_grids,
    parse_grid_arg,
    parse_value,
    point_name,
)
from overparam_lit.studies.results import (
    RESULTS_FILE,
    final_metrics,
    find_runs,
    group_curves,
    read_csv_rows,
    read_metrics_csv,
    read_results,
    require_dir,
    run_config,
    run_label,
    run_seed,
    run_width,
    series,
    write_results,
)

__all__ = [
    "DONE_FILE",
    "RESULTS_FILE",
    "Point",
    "check_configs",
    "expand_grid",
    "final_metrics",
    "find_runs",
    "fit_command",
    "group_curves",
    "load_grid_file",
    "merge_grids",
    "parse_grid_arg",
    "parse_value",
    "point_name",
    "read_csv_rows",
    "read_metrics_csv",
    "read_results",
    "require_dir",
    "run_config",
    "run_label",
    "run_seed",
    "run_width",
    "series",
    "write_results",
]

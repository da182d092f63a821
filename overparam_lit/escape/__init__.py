"""Escape dimensions: function-preserving widening, teacher-student helpers, success statistics.

Pure torch / numpy / scipy (no Lightning). :mod:`~overparam_lit.escape.surgery` adds hidden
units (MLP) or channels (CNN) without changing the function the network computes (the
:class:`~overparam_lit.callbacks.widen.Widen` callback does it during a fit), from the pieces in
:mod:`~overparam_lit.escape.hidden`, :mod:`~overparam_lit.escape.units` and
:mod:`~overparam_lit.escape.directions`;
:mod:`~overparam_lit.escape.teacher` makes teacher-student data with any activation;
:mod:`~overparam_lit.escape.critical` drives a small net to a critical point;
:mod:`~overparam_lit.escape.success` counts successes of multi-start fits (members), with Wilson
intervals and the multi-start lottery prediction.
"""

from overparam_lit.utils import lazy_exports

lazy_exports(__name__, {  # each name loads with its submodule on first use
    "critical": ("polish_to_critical_point",),
    "success": ("multistart_prediction", "relative_losses", "success_interval", "success_rates"),
    "teacher": ("TeacherData", "make_teacher_data", "teacher_net"),
    "directions": ("nudge_", "random_direction", "split_direction"),
    "hidden": ("hidden_layers", "hidden_sizes"),
    "surgery": ("Widened", "growth", "resize_to", "widen", "widen_layers", "widen_net"),
    "units": ("add_units", "choose_units"),
})

__all__ = [
    "TeacherData",
    "Widened",
    "add_units",
    "choose_units",
    "growth",
    "hidden_layers",
    "hidden_sizes",
    "make_teacher_data",
    "multistart_prediction",
    "nudge_",
    "polish_to_critical_point",
    "random_direction",
    "relative_losses",
    "resize_to",
    "split_direction",
    "success_interval",
    "success_rates",
    "teacher_net",
    "widen",
    "widen_layers",
    "widen_net",
]

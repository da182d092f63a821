"""Escape dimensions: seed ensembles, function-preserving widening, teacher-student helpers.

Pure torch / numpy / scipy (no Lightning). :mod:`~overparam_lit.escape.ensemble` trains many
seeds of one network as stacked parameters; :mod:`~overparam_lit.escape.widen` adds hidden
units (MLP) or channels (CNN) without changing the function the network computes;
:mod:`~overparam_lit.escape.teacher` makes teacher-student data with any activation;
:mod:`~overparam_lit.escape.critical` drives a small net to a critical point.
"""

from overparam_lit.escape.critical import polish_to_critical_point
from overparam_lit.escape.ensemble import (
    StackedEnsemble,
    relative_losses,
    seed_nets,
    success_interval,
)
from overparam_lit.escape.teacher import TeacherData, make_teacher_data, teacher_net
from overparam_lit.escape.widen import add_units, hidden_layers, widen, widen_net

__all__ = [
    "StackedEnsemble",
    "TeacherData",
    "add_units",
    "hidden_layers",
    "make_teacher_data",
    "polish_to_critical_point",
    "relative_losses",
    "seed_nets",
    "success_interval",
    "teacher_net",
    "widen",
    "widen_net",
]

"""Study callbacks: thin Lightning adapters over ``pruning/``, ``curvature/`` and ``regions/``."""

from overparam_lit.callbacks.hessian import HessianProbe
from overparam_lit.callbacks.imp import IterativeMagnitudePruning
from overparam_lit.callbacks.regions import DecisionRegions
from overparam_lit.callbacks.ticket import TicketStart
from overparam_lit.callbacks.widen import Widen

__all__ = ["DecisionRegions", "HessianProbe", "IterativeMagnitudePruning", "TicketStart", "Widen"]

"""Ticket perturbation inside a wide teacher-student student (many seeds at once).

A trained wide student gives a magnitude ticket (:func:`overparam_lit.pruning.magnitude_prune`,
one shot, per weight matrix; biases are never pruned). The student is then
retrained from its *own* initialisation with the rest of the net (the pruned weights):

* ``removed``: masked to zero and kept there (the ticket alone, Frankle & Carbin);
* ``reinit``: re-drawn from a fresh initialisation;
* ``perturbed``: its initial value plus ``sigma * std(layer) * N(0, 1)`` (``sigma = 0`` is the
  original run exactly).

The starts are those of :func:`overparam_lit.pruning.tickets.start_from_ticket` (``ticket`` and
``perturb_rest``); training goes through :func:`overparam_lit.escape.ensemble.fit_ensemble` with the
masked entries' gradients zeroed (Adam then never moves them off zero).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from overparam_lit.escape.ensemble import StackedEnsemble, _key, fit_ensemble
from overparam_lit.pruning.masks import full_masks, magnitude_prune
from overparam_lit.pruning.tickets import Ticket, start_from_ticket
from overparam_lit.utils import check

PERTURB_MODES = ("removed", "reinit", "perturbed")


def ticket_masks(trained: nn.Module, density: float, scope: str = "layerwise") -> dict[str, Tensor]:
    """One-shot magnitude masks over ``trained``'s weight matrices (bool, ``True`` = kept).

    ``layerwise`` (default) keeps ``density`` of every layer, so a small ticket cannot lose its
    whole output layer (``global`` pools the layers, as IMP's default does).
    """
    check(0 < density <= 1, "ticket density must be in (0, 1]", density, "Use e.g. density=0.25.")
    weights = {n: p.detach() for n, p in trained.named_parameters() if n.endswith("weight")}
    return magnitude_prune(weights, full_masks(weights), density, scope=scope)


def ticket_start(init: nn.Module, masks: dict[str, Tensor], mode: str, sigma: float = 0.0,
                 seed: int = 0) -> tuple[nn.Module, dict[str, Tensor] | None]:
    """A copy of ``init`` set up for ``mode``, and the masks to train with (``None``: dense).

    Ticket entries always keep their initial values; ``seed`` seeds the fresh initialisation
    (``reinit``) or the perturbation noise (``perturbed``).
    """
    check(mode in PERTURB_MODES, "unknown ticket perturbation mode", mode, f"Use one of {PERTURB_MODES}.")
    check(sigma >= 0, "sigma must be >= 0", sigma, "Pass a non-negative perturbation scale.")
    net = copy.deepcopy(init)
    state = {k: v.detach().clone() for k, v in {**dict(init.named_parameters()),
                                               **dict(init.named_buffers())}.items()}
    ticket = Ticket(masks={k: v.clone() for k, v in masks.items()}, rewind_state=state)
    with torch.no_grad():
        if mode == "removed":
            kept = start_from_ticket(net, ticket, "ticket", seed=seed)
        else:
            kept = start_from_ticket(net, ticket, "perturb_rest",
                                     sigma=None if mode == "reinit" else float(sigma), seed=seed)
    return net, kept


def fit_masked(nets: Sequence[nn.Module], masks: Sequence[dict[str, Tensor] | None], x: Tensor, y: Tensor,
               steps: int, **fit_kwargs) -> tuple[Tensor, StackedEnsemble]:
    """Train ``nets`` together (:func:`fit_ensemble`), each with its own masks (``None``: dense).

    Returns the final full-set losses ``(S,)`` and the trained ensemble.
    """
    check(len(nets) == len(masks), "need one mask dict (or None) per network", (len(nets), len(masks)),
          "Pass masks aligned with nets.")
    ens = StackedEnsemble(nets)
    names = sorted({n for m in masks if m is not None for n in m})
    handles = []
    for n in names:
        p = ens.stacked[_key(n)]
        stacked = torch.stack([(m[n] if m is not None else torch.ones_like(p[0], dtype=torch.bool))
                               for m in masks]).to(p.dtype)
        with torch.no_grad():
            p.mul_(stacked)
        handles.append(p.register_hook(lambda g, s=stacked: g * s))
    try:
        final, _ = fit_ensemble(ens, x, y, steps, **fit_kwargs)
    finally:
        for h in handles:
            h.remove()
    return final, ens

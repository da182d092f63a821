"""Starting a network from a saved ticket, and its controls.

A ticket is an IMP level folder (``imp/level_XX/``) holding ``mask.pt`` (bool masks by
parameter name) and ``rewind.pt`` (the full dense state, every parameter and buffer, that the
level was started from before masking; for rewind mode ``weights`` the step-k state).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from overparam_lit.pruning.binding import Masks, load_tensors, structural_masks
from overparam_lit.pruning.masks import random_masks_like, random_pool_masks
from overparam_lit.pruning.members import member_reports
from overparam_lit.utils import ConfigError, check

TICKET_MODES = ("ticket", "random_reinit", "random_mask", "random_prune", "perturb_rest")
LIFTS = ("biases", "output")
"""Parts of a ticket that :func:`lift_ticket` can keep dense."""


@dataclass(frozen=True, kw_only=True)
class TicketOptions:
    """The settings of a fit started from a ticket (the options of
    :class:`~overparam_lit.callbacks.ticket.TicketStart`), checked on construction. ``ticket``
    becomes a string, ``seed`` an integer, ``eval_splits`` a tuple, and ``lift`` the sorted list
    of its distinct parts (one part may be given as a string).

    Args:
        ticket: path of the level folder, e.g. ``runs/x/imp/level_07``.
        mode: one of ``ticket``, ``random_reinit``, ``random_mask``, ``random_prune``, ``perturb_rest``.
        sigma: perturbation scale for ``perturb_rest`` (``None``: re-draw from a fresh init).
        seed: seed of the controls' draws (combined with each member's seed).
        eval_splits: splits evaluated at the end of training for ``ticket_result.json``.
        lift: parts of the ticket kept dense before the mode applies (an ablation): ``biases``
            and/or ``output`` (the output layer); random pruning then keeps the ticket's counts in
            the rest of each pool. Listed in ``ticket_start.json`` and ``ticket_result.json``.
    """

    ticket: str | None = None
    mode: str = "ticket"
    sigma: float | None = None
    seed: int = 0
    eval_splits: Sequence[str] = ("val", "test")
    lift: Sequence[str] = ()

    def __post_init__(self) -> None:
        mode, sigma = self.mode, self.sigma
        check(bool(self.ticket), "TicketStart needs a ticket folder", self.ticket,
              "Set ticket to an IMP level folder, e.g. runs/<run>/imp/level_08.")
        check(mode in TICKET_MODES, "unknown ticket mode", mode, f"Use one of {TICKET_MODES}.")
        check(sigma is None or sigma >= 0, "sigma must be >= 0 or null", sigma,
              "Set sigma to a perturbation scale, or null to re-draw the rest from a fresh init.")
        check(sigma is None or mode == "perturb_rest", "sigma only applies to mode 'perturb_rest'",
              (mode, sigma), "Remove sigma or use mode: perturb_rest.")
        lift = [self.lift] if isinstance(self.lift, str) else list(self.lift)
        check(set(lift) <= set(LIFTS), "unknown part of a ticket to keep dense", lift,
              f"Use some of {LIFTS}, e.g. lift: [biases, output].")
        check(mode != "perturb_rest" or not lift, "lift does not apply to mode 'perturb_rest' (a dense net)",
              lift, "Remove lift or choose another mode.")
        object.__setattr__(self, "ticket", str(self.ticket))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "eval_splits", tuple(self.eval_splits))
        object.__setattr__(self, "lift", sorted(set(lift)))


@dataclass
class Ticket:
    """A loaded ticket: masks, dense rewind state and the level's metadata."""

    masks: dict[str, Tensor]
    rewind_state: dict[str, Tensor]
    meta: dict = field(default_factory=dict)


def load_ticket(path: str | Path) -> Ticket:
    """Load a ticket from an IMP level folder (``.../imp/level_XX``)."""
    path = Path(path)
    fix = "Point ticket at a folder like runs/<run>/imp/level_03 written by IterativeMagnitudePruning."
    check(path.is_dir(), "ticket folder not found (an IMP level folder holding mask.pt and rewind.pt)",
          str(path), fix)
    masks = Masks.load(path / "mask.pt", "the ticket's mask.pt", fix)
    state = load_tensors(path / "rewind.pt", "the ticket's rewind.pt", fix)
    meta = {}
    if (path / "metrics.json").is_file():
        try:
            meta = json.loads((path / "metrics.json").read_text())
        except (OSError, ValueError):
            meta = {}
    return Ticket(masks=masks.cpu(), rewind_state=state, meta=meta)


def lift_ticket(ticket: Ticket, parts: Sequence[str], output_layer: str | None,
                base: Mapping[str, Tensor] | None = None) -> Ticket:
    """``ticket`` with the masks of ``parts`` kept dense: ``biases`` (every ``*.bias`` mask) and
    ``output`` (the tensors of module ``output_layer``), a stack's padded entries excepted (its
    ``base`` masks). The lifted tensors leave the ticket's ``pools``, so random pruning keeps the
    ticket's counts in what remains of each pool."""
    unknown = sorted(set(parts) - set(LIFTS))
    check(not unknown, "unknown part of a ticket to keep dense", unknown, f"Use some of {LIFTS}.")

    def lifted(name: str) -> bool:
        return ("biases" in parts and name.endswith(".bias")) or (
            "output" in parts and output_layer is not None and name.rsplit(".", 1)[0] == output_layer)

    masks = {n: (base[n].bool().clone() if base is not None and n in base else torch.ones_like(m))
             if lifted(n) else m for n, m in ticket.masks.items()}
    meta = dict(ticket.meta)
    if isinstance(meta.get("pools"), list):
        meta["pools"] = [p for p in ([n for n in pool if not lifted(n)] for pool in meta["pools"]) if p]
    return Ticket(masks, ticket.rewind_state, meta)


MEMBERS_FIX = ("Use a ticket from an IMP run with the same members (seeds and widths) as this fit, or set "
               "this fit's members to the ticket's.")


def member_mismatch(ticket: Ticket, model: nn.Module) -> str | None:
    """What differs when ``ticket`` holds another number of members than ``model`` (stacked
    tensors carry the members first): the counts and the first mask that shows it; ``None`` when
    they agree (a ticket of another model is named by :func:`check_ticket`)."""
    params = dict(model.named_parameters())
    members = getattr(model, "num_members", 1) if getattr(model, "members", None) is not None else None
    for name, m in ticket.masks.items():
        if name not in params:
            continue
        have, want = tuple(m.shape), tuple(params[name].shape)
        if have == want:
            continue
        shapes = f"(mask of {name!r}: {have}, parameter {want})"
        if members is not None and len(have) == len(want) and have[1:] == want[1:]:
            return f"the ticket holds {have[0]} members and this fit has {members} {shapes}"
        if members is not None and have == want[1:]:
            return f"the ticket is of a single model and this fit has {members} members {shapes}"
        if members is None and have[1:] == want:
            return f"the ticket holds {have[0]} members and this fit is a single model {shapes}"
        return None  # another model: named by check_ticket
    return None


def check_ticket(ticket: Ticket, model: nn.Module) -> None:
    """Refuse a ticket whose masks or rewind state do not fit ``model`` (names and shapes; a ticket
    of another number of members is named as such)."""
    params = dict(model.named_parameters())
    mismatch = member_mismatch(ticket, model)
    if mismatch is not None:
        raise ConfigError(f"{mismatch}. {MEMBERS_FIX}")
    state = {**params, **dict(model.named_buffers())}
    for name, m in ticket.masks.items():
        check(name in params, "ticket mask names a parameter the model does not have", name,
              "Use a ticket saved from the same model class and width.")
        check(tuple(m.shape) == tuple(params[name].shape),
              f"ticket mask shape does not match parameter {name!r} of shape "
              f"{tuple(params[name].shape)}", tuple(m.shape),
              "Use a ticket saved from the same model class and width.")
    missing = [k for k in params if k not in ticket.rewind_state]
    check(not missing, "ticket rewind state lacks parameters of the model", missing[:5],
          "Use a ticket saved from the same model class and width.")
    for name, v in ticket.rewind_state.items():
        if name in state:
            check(tuple(v.shape) == tuple(state[name].shape),
                  f"ticket rewind state shape does not match {name!r} of shape "
                  f"{tuple(state[name].shape)}", tuple(v.shape),
                  "Use a ticket saved from the same model class and width.")


def fresh_init_state(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """Parameters and buffers of a freshly initialised copy of ``model`` (each layer's own
    ``reset_parameters`` with torch's RNG seeded by ``seed``; the global RNG is untouched)."""
    fresh = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not fresh:
                reset()
    return {k: v.detach().clone() for k, v in {**dict(fresh.named_parameters()),
                                               **dict(fresh.named_buffers())}.items()}


def module_state(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and persistent buffer of ``module``, cloned to the CPU."""
    items = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    keys = set(module.state_dict(keep_vars=True))
    return {k: v.detach().to("cpu", copy=True) for k, v in items.items() if k in keys}


@torch.no_grad()
def load_state_(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into ``model``'s parameters and buffers in place (names must exist)."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for k, v in state.items():
        if k in own:
            own[k].copy_(v.to(own[k].device, own[k].dtype))


def _std(w: Tensor, own: Tensor | None) -> Tensor:
    return (w[own] if own is not None else w).float().std()


@torch.no_grad()
def start_from_ticket(
    model: nn.Module,
    ticket: Ticket,
    mode: str = "ticket",
    sigma: float | None = None,
    seed: int | Sequence[int] = 0,
    fresh_state: Callable[[], Mapping[str, Tensor]] | None = None,
    base: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor] | None:
    """Set ``model``'s weights for one of the ticket starts and return the masks to train with.

    Modes:
        ``ticket``: rewind state with the ticket's mask (Frankle & Carbin's winning ticket).
        ``random_reinit``: the same mask on a fresh initialisation.
        ``random_mask``: the rewind state with a random mask of the ticket's per-tensor densities
            (what the ticket keeps dense, e.g. an output layer or biases, stays dense).
        ``random_prune``: random pruning: the rewind state with a random mask drawn under IMP's own
            scope and schedule, as many entries kept in every pruning pool as the ticket keeps
            there (the global pool, or each layer's), at uniform positions within the pool (the
            pools are the ticket's ``metrics.json`` ``pools``).
        ``perturb_rest``: the *dense* net (no mask is returned): the ticket's surviving weights
            at their rewind values, every pruned weight re-drawn from a fresh initialisation
            (``sigma is None``) or set to its rewind value plus ``sigma * std(layer) * N(0, 1)``.

    Args:
        seed: seed of the random masks and perturbations, and of the fresh initialisation of a
            plain module; a list gives one seed per member of a stacked model (leading axis).
        fresh_state: a fresh initialisation of ``model`` (default: every layer's own
            ``reset_parameters`` under ``seed``).
        base: a stack's structural masks: random masks and layer statistics stay within each
            member's own entries.
    """
    if mode not in TICKET_MODES:
        raise ConfigError(f"unknown ticket mode {mode!r}; use one of {TICKET_MODES}")
    check_ticket(ticket, model)
    seeds = [int(seed)] if isinstance(seed, int) else [int(s) for s in seed]
    stacked = not isinstance(seed, int)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    state = {k: v.clone() for k, v in ticket.rewind_state.items()}
    masks: dict[str, Tensor] | None = {k: v.clone() for k, v in ticket.masks.items()}

    def fresh() -> Mapping[str, Tensor]:
        return fresh_state() if fresh_state is not None else fresh_init_state(model, seeds[0])

    def parts(t: Tensor) -> list[Tensor]:
        return list(t) if stacked else [t]

    if mode == "random_reinit":
        state.update(fresh())
    elif mode == "random_mask":
        new = {}
        for n, m in ticket.masks.items():
            owns = parts(base[n]) if base is not None and n in base else [None] * len(seeds)
            drawn = [random_masks_like({n: mi}, g, None if o is None else {n: o})[n]
                     for mi, g, o in zip(parts(m), gens, owns, strict=True)]
            new[n] = torch.stack(drawn) if stacked else drawn[0]
        masks = new
    elif mode == "random_prune":
        pools = ticket.meta.get("pools")
        check(isinstance(pools, list) and bool(pools), "the ticket's metrics.json lists no pruning pools",
              pools, "Use a ticket written by this version of IterativeMagnitudePruning (its level's "
              "metrics.json lists 'pools'), or the control random_mask.")
        names = list(ticket.masks)
        owns = {n: parts(base[n]) for n in names if base is not None and n in base}
        drawn = []
        for i, g in enumerate(gens):
            mine = {n: parts(ticket.masks[n])[i] for n in names}
            drawn.append(random_pool_masks(mine, pools, g, {n: o[i] for n, o in owns.items()} or None))
        masks = {n: torch.stack([d[n] for d in drawn]) if stacked else drawn[0][n] for n in names}
    elif mode == "perturb_rest":
        redrawn = fresh() if sigma is None else None
        for name, m in ticket.masks.items():
            w = state[name]
            if redrawn is not None:
                rest = redrawn[name]
            else:
                owns = parts(base[name]) if base is not None and name in base else [None] * len(seeds)
                noise = [float(sigma) * _std(wi, o) * torch.randn(wi.shape, generator=g)
                         for wi, g, o in zip(parts(w), gens, owns, strict=True)]
                rest = w + (torch.stack(noise) if stacked else noise[0])
            keep = m if base is None or name not in base else m | ~base[name]
            state[name] = torch.where(keep, w, rest.to(w.dtype))
        masks = None
    load_state_(model, state)
    if masks is not None:
        params = dict(model.named_parameters())
        for k, m in masks.items():
            params[k].mul_(m.to(params[k].device, params[k].dtype))
    return masks


def start_module(module: nn.Module, ticket: Ticket, mode: str = "ticket", sigma: float | None = None,
                 seeds: Sequence[int] = (0,)) -> tuple[dict[str, Tensor] | None, dict[str, Any]]:
    """:func:`start_from_ticket` on a model: a stack (a model with ``members``) gets one seed per
    member and its own ``fresh_state(seeds)`` and structural masks; a single model uses
    ``seeds[0]``. Returns the masks to train with (``None`` for ``perturb_rest``) and the
    densities, means over members: ``density`` (of the trained net, 1 for ``perturb_rest``),
    ``ticket_density`` and the ticket's ``ticket_meta`` (without its member list)."""
    members = getattr(module, "members", None)
    fresh = (lambda: module.fresh_state(list(seeds))) if hasattr(module, "fresh_state") else None
    base = structural_masks(module)
    masks = start_from_ticket(module, ticket, mode, sigma, list(seeds) if members is not None else seeds[0],
                              fresh, base)
    kept = ticket.masks if masks is None else masks
    reports = member_reports(kept, base, None if members is None else len(members))
    dens = [1.0 if masks is None else r["total"]["density"] for r in reports]
    return masks, {"density": sum(dens) / len(dens),
                   "ticket_density": sum(r["total"]["density"] for r in reports) / len(reports),
                   "ticket_meta": {k: v for k, v in ticket.meta.items() if k != "members"}}

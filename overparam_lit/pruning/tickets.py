"""Starting a network from a saved ticket, and its controls.

A ticket is an IMP level folder (``imp/level_XX/``) holding ``mask.pt`` (bool masks by
parameter name) and ``rewind.pt`` (the full dense state, every parameter and buffer, that the
level was started from before masking; for rewind mode ``weights`` the step-k state).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from overparam_lit.pruning.masks import random_masks_like
from overparam_lit.utils import ConfigError, check

TICKET_MODES = ("ticket", "random_reinit", "random_mask", "perturb_rest")


@dataclass
class Ticket:
    """A loaded ticket: masks, dense rewind state and the level's metadata."""

    masks: dict[str, Tensor]
    rewind_state: dict[str, Tensor]
    meta: dict = field(default_factory=dict)


def load_ticket(path: str | Path) -> Ticket:
    """Load a ticket from an IMP level folder (``.../imp/level_XX``)."""
    path = Path(path)
    check(
        (path / "mask.pt").is_file() and (path / "rewind.pt").is_file(),
        "ticket folder must contain mask.pt and rewind.pt (an IMP level folder)",
        str(path),
        "Point ticket at a folder like runs/<run>/imp/level_03 written by IterativeMagnitudePruning.",
    )
    masks = torch.load(path / "mask.pt", map_location="cpu", weights_only=True)
    state = torch.load(path / "rewind.pt", map_location="cpu", weights_only=True)
    meta = {}
    if (path / "metrics.json").is_file():
        meta = json.loads((path / "metrics.json").read_text())
    return Ticket(masks={k: v.bool() for k, v in masks.items()}, rewind_state=state, meta=meta)


def check_ticket(ticket: Ticket, model: nn.Module) -> None:
    """Refuse a ticket whose masks or rewind state do not fit ``model`` (names and shapes)."""
    params = dict(model.named_parameters())
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


@torch.no_grad()
def load_state_(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into ``model``'s parameters and buffers in place (names must exist)."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for k, v in state.items():
        if k in own:
            own[k].copy_(v.to(own[k].device, own[k].dtype))


@torch.no_grad()
def start_from_ticket(
    model: nn.Module,
    ticket: Ticket,
    mode: str = "ticket",
    sigma: float | None = None,
    seed: int = 0,
) -> dict[str, Tensor] | None:
    """Set ``model``'s weights for one of the ticket starts and return the masks to train with.

    Modes:
        ``ticket``: rewind state with the ticket's mask (Frankle & Carbin's winning ticket).
        ``random_reinit``: the same mask on a fresh initialisation (seed ``seed``).
        ``random_mask``: the rewind state with a random mask of the same per-layer density.
        ``perturb_rest``: the *dense* net (no mask is returned): the ticket's surviving weights
            at their rewind values, every pruned weight re-drawn from a fresh initialisation
            (``sigma is None``) or set to its rewind value plus ``sigma * std(layer) * N(0, 1)``.
    """
    if mode not in TICKET_MODES:
        raise ConfigError(f"unknown ticket mode {mode!r}; use one of {TICKET_MODES}")
    check_ticket(ticket, model)
    gen = torch.Generator().manual_seed(int(seed))
    state = {k: v.clone() for k, v in ticket.rewind_state.items()}
    masks: dict[str, Tensor] | None = {k: v.clone() for k, v in ticket.masks.items()}
    if mode == "random_reinit":
        state = fresh_init_state(model, seed)
    elif mode == "random_mask":
        masks = random_masks_like(ticket.masks, gen)
    elif mode == "perturb_rest":
        fresh = fresh_init_state(model, seed) if sigma is None else None
        for name, m in ticket.masks.items():
            w = state[name]
            if sigma is None:
                rest = fresh[name]
            else:
                rest = w + float(sigma) * w.float().std() * torch.randn(w.shape, generator=gen)
            state[name] = torch.where(m, w, rest.to(w.dtype))
        masks = None
    load_state_(model, state)
    if masks is not None:
        params = dict(model.named_parameters())
        for k, m in masks.items():
            params[k].mul_(m.to(params[k].device, params[k].dtype))
    return masks

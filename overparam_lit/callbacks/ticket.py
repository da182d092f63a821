"""Start a fit from a saved lottery ticket (an IMP level folder) or from one of its controls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from overparam_lit import pruning
from overparam_lit.callbacks.masked import MaskedTraining, broadcast_masks, evaluate_splits
from overparam_lit.models.stack import control_seed
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_write_json, check, log_scalars


class TicketStart(MaskedTraining):
    """Start a fit from a saved ticket (an IMP level folder), or from one of its controls.

    Modes (see :func:`overparam_lit.pruning.start_from_ticket`): ``ticket`` (rewind weights,
    ticket mask), ``random_reinit`` (ticket mask, fresh init), ``random_mask`` (rewind weights,
    random mask with the ticket's per-tensor densities: what the ticket keeps dense stays dense),
    ``random_prune`` (rewind weights, random pruning under IMP's own scope and schedule: the
    ticket's kept count in every pruning pool, at random positions within the pool),
    ``perturb_rest`` (dense net: ticket weights at their rewind values, every other weight
    re-drawn, or perturbed by ``sigma`` times the layer's weight std). Masks are kept during
    training exactly as in IMP.

    With members, the ticket must come from a fit with the same members (an IMP run with the
    same ``--model.seeds``/``--model.widths``): every member starts from its own ticket, and its
    controls are drawn from its own seed (:func:`~overparam_lit.models.stack.control_seed`), so a
    member's control equals the single run's control. Writes ``<run_dir>/imp/ticket_start.json``
    and, at the end, ``ticket_result.json`` (means, and every member under ``members``): the
    final metrics of ``eval_splits`` and ``best_val/acc``, the best validation accuracy seen
    during training (every validation run of the fit).

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

    def __init__(self, ticket: str | None = None, mode: str = "ticket", sigma: float | None = None,
                 seed: int = 0, eval_splits: Sequence[str] = ("val", "test"),
                 lift: Sequence[str] = ()) -> None:
        super().__init__()
        check(bool(ticket), "TicketStart needs a ticket folder", ticket,
              "Set ticket to an IMP level folder, e.g. runs/<run>/imp/level_08.")
        check(mode in pruning.TICKET_MODES, "unknown ticket mode", mode,
              f"Use one of {pruning.TICKET_MODES}.")
        check(sigma is None or sigma >= 0, "sigma must be >= 0 or null", sigma,
              "Set sigma to a perturbation scale, or null to re-draw the rest from a fresh init.")
        check(sigma is None or mode == "perturb_rest", "sigma only applies to mode 'perturb_rest'",
              (mode, sigma), "Remove sigma or use mode: perturb_rest.")
        lift = [lift] if isinstance(lift, str) else list(lift)
        check(set(lift) <= set(pruning.LIFTS), "unknown part of a ticket to keep dense", lift,
              f"Use some of {pruning.LIFTS}, e.g. lift: [biases, output].")
        check(mode != "perturb_rest" or not lift, "lift does not apply to mode 'perturb_rest' (a dense net)",
              lift, "Remove lift or choose another mode.")
        self.lift = sorted(set(lift))
        self.ticket, self.mode, self.sigma, self.seed = str(ticket), mode, sigma, int(seed)
        self.eval_splits = tuple(eval_splits)
        self._started = False
        self._info: dict[str, Any] = {}
        self.best: dict[str, list[float]] = {}

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._started:
            return
        ticket = pruning.load_ticket(self.ticket)
        pruning.check_ticket(ticket, pl_module)
        if self.lift:
            net = getattr(pl_module, "net", pl_module)
            out = pruning.output_layer_name(net)
            prefix = "net." if net is not pl_module else ""
            ticket = pruning.lift_ticket(ticket, self.lift, None if out is None else prefix + out,
                                         pruning.structural_masks(pl_module))
        rows = pl_module.member_rows() if hasattr(pl_module, "member_rows") else [{"seed": 0}]
        seeds = [control_seed(self.seed, r["seed"]) for r in rows]
        self.masks, info = pruning.start_module(pl_module, ticket, self.mode, self.sigma, seeds)
        self._started = True
        self._info = {"ticket": self.ticket, "mode": self.mode, "sigma": self.sigma, "seed": self.seed,
                      "lift": self.lift, **info}

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.masks is not None:
            self.masks = {n: m.cpu() for n, m in broadcast_masks(trainer, self.masks).items()}
        self._bind(pl_module)
        if trainer.global_rank == 0:
            atomic_write_json(self._info, RunFolder.of(trainer).ticket_start)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and hasattr(pl_module, "member_epoch_metrics"):
            self.best = pruning.best_accuracies(self.best, pl_module.member_epoch_metrics("val"))

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = evaluate_splits(trainer, pl_module, self.eval_splits)
        metrics.update({f"best_{k}": torch.tensor(v) for k, v in self.best.items()})
        means = {k: float(v.mean()) for k, v in metrics.items()}
        result: dict[str, Any] = {**self._info, **means}
        if getattr(pl_module, "members", None) is not None:
            result["members"] = [{**row, **{k: float(v[i]) for k, v in metrics.items()}}
                                 for i, row in enumerate(pl_module.member_rows())]
        log_scalars(trainer, {f"ticket/{k.replace('/', '_')}": v for k, v in means.items()})
        if trainer.global_rank == 0:
            atomic_write_json(result, RunFolder.of(trainer).ticket_result)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"masks": None if self.masks is None else {n: m.cpu() for n, m in self.masks.items()},
                "info": self._info, "best": self.best}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = state_dict["masks"]
        self._info = state_dict.get("info", {})
        self.best = dict(state_dict.get("best") or {})
        self._started = True

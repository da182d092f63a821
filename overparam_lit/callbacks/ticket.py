"""Start a fit from a saved lottery ticket (an IMP level folder) or from one of its controls."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from typing_extensions import override

from overparam_lit import pruning
from overparam_lit.callbacks.masked import MaskedTraining, broadcast_masks, evaluate_splits
from overparam_lit.callbacks.options import takes_options
from overparam_lit.models.stack import control_seed
from overparam_lit.protocols import network_of
from overparam_lit.pruning.tickets import TicketOptions, member_mismatch
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import ConfigError, atomic_write_json, log_scalars


@takes_options(TicketOptions)
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

    The options are the fields of :class:`~overparam_lit.pruning.tickets.TicketOptions`, given as
    one ``TicketOptions`` or as keywords (:func:`~overparam_lit.callbacks.options.takes_options`).
    """

    def __init__(self, options: TicketOptions) -> None:
        super().__init__()
        self.opts = options
        self._started = False
        self._info: dict[str, Any] = {}
        self.best: dict[str, list[float]] = {}

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._started:
            return
        opts = self.opts
        ticket = pruning.load_ticket(opts.ticket)
        if (mismatch := member_mismatch(ticket, pl_module)) is not None:
            raise ConfigError(f"{mismatch}. Use a ticket from an IMP run with the same "
                              "--model.seeds/--model.widths as this fit, or set this fit's members to the "
                              "ticket's.")
        pruning.check_ticket(ticket, pl_module)
        if opts.lift:
            net = network_of(pl_module)
            out = pruning.output_layer_name(net)
            prefix = "net." if net is not pl_module else ""
            ticket = pruning.lift_ticket(ticket, opts.lift, None if out is None else prefix + out,
                                         pruning.structural_masks(pl_module))
        rows = pl_module.member_rows() if hasattr(pl_module, "member_rows") else [{"seed": 0}]
        seeds = [control_seed(opts.seed, r["seed"]) for r in rows]
        self.masks, info = pruning.start_module(pl_module, ticket, opts.mode, opts.sigma, seeds)
        self._started = True
        self._info = {"ticket": opts.ticket, "mode": opts.mode, "sigma": opts.sigma, "seed": opts.seed,
                      "lift": opts.lift, **info}

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
        metrics = evaluate_splits(trainer, pl_module, self.opts.eval_splits)
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

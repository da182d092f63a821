"""How :class:`~overparam_lit.models.base.OverparamModule` watches its training loss: a loss that
becomes NaN or infinite for every member stops the fit at that step
(:class:`~overparam_lit.stopping.TrainingDiverged`), a diverged member among others is reported
and left out of the means, and a loss that grows over :data:`LOSS_GROWTH_LIMIT` times its first
value is remembered for the end-of-fit summary."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from overparam_lit.stopping import TrainingDiverged

LOSS_GROWTH_LIMIT = 1e6
"""A training loss this many times its first step's value is reported as a divergence that has
not (yet) reached NaN (Adam at lr 1e10 stays finite at 1e34)."""


class DivergenceWatch:
    """The training loss's watch (a mixin of :class:`~overparam_lit.models.base.OverparamModule`)."""

    def _watch_loss(self, losses: Tensor, step: int) -> None:
        """Keep the first step's losses, and stop at the step where every member's loss is NaN or
        infinite (one process; under DDP the epoch's end stops, where all ranks agree)."""
        if self.first_loss is None:
            self.first_loss = losses.clone()
        if self.trainer.world_size > 1:
            return
        if losses.numel() == 1:  # a single model: one host float, cheaper than isfinite
            if not math.isfinite(float(losses)):
                self._diverged(step)
        elif not bool(torch.isfinite(losses).any()):
            self._diverged(step)

    def _stop_on_divergence(self) -> None:
        bad = sorted(self._first_bad)
        if not bad:
            return
        if self.members is None or len(bad) == self.num_members:
            self._diverged(max(self._first_bad.values()))
        new = [i for i in bad if i not in getattr(self, "_reported_bad", set())]
        if new:
            self._reported_bad = set(bad)
            rank_zero_warn(f"members {new} diverged (NaN or infinite loss from steps "
                           f"{[self._first_bad[i] for i in new]}); the others keep training and the "
                           "logged means leave diverged members out (members/diverged counts them).")

    def _diverged(self, step: int) -> None:
        """Raise :class:`TrainingDiverged` for ``step``, naming the last checkpoint before it (a
        checkpoint of an earlier epoch, all finite) or saying that there is none."""
        self._drain("train")  # the members' first non-finite steps
        who = ""
        if self.members is not None:
            first = min(self._first_bad, key=self._first_bad.get) if self._first_bad else 0
            who = f" for every member (first: member {first} at step {self._first_bad.get(first, step)})"
        from overparam_lit.runfolder import RunFolder

        ckpt = RunFolder(self.trainer.default_root_dir).newest_intact_checkpoint()
        where = (f"the last checkpoint before it is {ckpt} (its weights are finite)" if ckpt is not None
                 else "no checkpoint was written before it (the first is made when the first "
                      "epoch ends), so none holds a finite state")
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at step {step} (epoch "
            f"{self.trainer.current_epoch}){who}; the fit stopped at that step and {where}. Lower "
            "the learning rate (the optimizer's lr), add warm-up or gradient clipping, or check the "
            "data for non-finite values.")

    def _note_growth(self, losses: Tensor) -> None:
        """Remember a training loss that grew over :data:`LOSS_GROWTH_LIMIT` times its first value
        (the end-of-fit summary warns about it)."""
        if self.first_loss is None:
            return
        first = self.first_loss.to(losses)
        ok = torch.isfinite(losses) & (first > 0)
        if not bool(ok.any()):
            return
        ratio = torch.where(ok, losses / first.clamp_min(torch.finfo(first.dtype).tiny), 0)
        i = int(ratio.argmax())
        if float(ratio[i]) > LOSS_GROWTH_LIMIT and float(ratio[i]) > (self.loss_growth or {}).get("ratio", 0):
            self.loss_growth = {"ratio": float(ratio[i]), "first": float(first[i]), "loss": float(losses[i]),
                                "epoch": float(self.trainer.current_epoch), "member": float(i)}

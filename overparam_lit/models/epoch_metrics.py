"""Per-member epoch metrics of :class:`~overparam_lit.models.base.OverparamModule`: a step only
keeps references to its losses and predictions, and the epoch's sums (loss, hits, hits on noisy
labels, counts) are made once, when read, into running sums reduced over DDP ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

TRAIN_SUMS = ("loss_sum", "hits", "hits_flipped", "flips", "count")
EVAL_SUMS = ("loss_sum", "hits", "hits_noisy", "count")


class RunningSums(Metric):
    """Element-wise running sums of a fixed-size tensor, summed over DDP ranks."""

    full_state_update = False

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(*shape), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        self.sums += values

    def compute(self) -> Tensor:
        return self.sums


class EpochMetrics:
    """The module's per-member epoch metrics and their logged means (a mixin of
    :class:`~overparam_lit.models.base.OverparamModule`)."""

    def _build_metrics(self) -> None:
        # one cheap update per step: running sums per member, reduced over DDP ranks
        m = self.num_members
        self.metric = nn.ModuleDict({
            "train_sums": RunningSums(m, len(TRAIN_SUMS)),
            "val_sums": RunningSums(m, len(EVAL_SUMS)),
            "test_sums": RunningSums(m, len(EVAL_SUMS)),
        })

    def _drain(self, split: str) -> None:
        """Sum the recorded steps of ``split`` into its metric (and note diverged members)."""
        steps = self._steps.pop(split, [])
        if not steps:
            return
        losses = torch.stack([s[0] for s in steps])  # (S, M)
        n = torch.tensor([float(s[1]) for s in steps], dtype=losses.dtype, device=losses.device)
        sums = torch.zeros(self.num_members, len(TRAIN_SUMS if split == "train" else EVAL_SUMS),
                           dtype=losses.dtype, device=losses.device)
        sums[:, 0] = (losses * n[:, None]).sum(0)
        sums[:, -1] = n.sum()
        if steps[0][2] is not None:  # (M, N) predictions of the epoch's samples, and their labels
            pred = torch.cat([s[2] for s in steps], dim=1)
            y, y_true = torch.cat([s[3] for s in steps]), torch.cat([s[4] for s in steps])
            if split == "train":  # hits, hits on flipped labels (memorised noise), flips
                hit, flipped = pred == y, y != y_true
                counts = torch.stack([hit.sum(1), (hit & flipped).sum(1),
                                      flipped.sum().expand(hit.shape[0])], dim=1)
            else:  # hits on clean labels, on noisy labels
                counts = torch.stack([(pred == y_true).sum(1), (pred == y).sum(1)], dim=1)
            sums[:, 1:1 + counts.shape[1]] = counts.to(losses.dtype)
        self.metric[f"{split}_sums"].update(sums)
        if split == "train":
            bad = ~torch.isfinite(losses)
            for i in bad.any(0).nonzero().flatten().tolist():
                self._first_bad.setdefault(i, steps[int(bad[:, i].nonzero()[0])][5])

    def member_epoch_metrics(self, split: str) -> dict[str, Tensor]:
        """Each member's metrics ``{key: (M,)}`` of the running epoch of ``split`` (``train``,
        ``val`` or ``test``), reduced over DDP ranks; reading them does not reset them."""
        self._drain(split)
        sums = self.metric[f"{split}_sums"].compute().double()
        count = sums[:, -1].clamp_min(1)
        out = {f"{split}/loss": sums[:, 0] / count}
        if self.task == "classification":
            out[f"{split}/acc"] = sums[:, 1] / count
            if split == "train":
                if float(sums[0, 3]) > 0:
                    out["train/acc_noisy_memorized"] = sums[:, 2] / sums[:, 3]
            else:
                out[f"{split}/acc_noisy"] = sums[:, 2] / count
        return out

    def _log_epoch(self, split: str) -> None:
        per_member = self.member_epoch_metrics(split)
        self.metric[f"{split}_sums"].reset()
        finite = torch.isfinite(per_member[f"{split}/loss"])
        logs: dict[str, Any] = {}
        for key, values in per_member.items():
            ok = values[finite] if bool(finite.any()) else values
            logs[key] = ok.mean().float()
        if self.members is not None and split == "train":
            logs["members/diverged"] = float((~finite).sum())
        if split == "train":
            self._note_growth(per_member["train/loss"])
        # metrics are already reduced over ranks
        self.log_dict(logs, sync_dist=False, rank_zero_only=True)

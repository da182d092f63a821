"""``DecisionRegions``: decision-region snapshots on a fixed plane bank during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from typing_extensions import override

from overparam_lit.callbacks.options import takes_options
from overparam_lit.models.memory import available_bytes
from overparam_lit.regions import RegionOptions, check_map_size, label_maps, plane_bank_for
from overparam_lit.regions.planes import PlaneBank
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import atomic_save_npz, atomic_write_json, check, log_image, log_scalars


@takes_options(RegionOptions)
class DecisionRegions(L.Callback):
    """Snapshots of a classifier's decision regions on a fixed bank of planes.

    At each scheduled epoch the predicted class is computed on every grid point of every plane
    (eval mode, no gradients; see :func:`overparam_lit.regions.measure`), and the callback logs
    ``regions/fragmentation`` (connected regions per class present; 1 = every class in one piece),
    ``regions/fragmentation_raw``, ``regions/fragmentation_per_class/<c>``, ``regions/agreement``
    and ``regions/kappa`` (against the previous snapshot), ``regions/boundary_fraction``,
    ``regions/anchor_consistency(_true)``, with ``regions/epoch`` (completed epochs; 0 is the
    initial net) as the x axis. With members every member has its own maps on the same planes:
    the logged numbers are member means, ``regions/member_agreement`` and
    ``regions/seed_agreement`` compare members, and each member's numbers are in ``history.json``.

    Artifacts under ``run_dir/regions/``: ``bank.pt``, ``maps_epochNNNN.npz`` (with a leading
    member axis for members), ``epochNNNN.png`` (member 0), ``history.json``, and at the end
    ``overview.png``, ``filmstrip.png`` and ``filmstrip.gif``. Under DDP rank 0 computes the
    snapshot while the other ranks wait at a barrier.

    The options are the fields of :class:`~overparam_lit.regions.RegionOptions`, given as one
    ``RegionOptions`` or as keywords (:func:`~overparam_lit.callbacks.options.takes_options`).
    """

    def __init__(self, options: RegionOptions) -> None:
        super().__init__()
        self.opts = options
        self.plan = self.opts.plan
        check_map_size(options.num_planes, options.resolution, 1, available_bytes("cpu"))
        self.bank: PlaneBank | None = None
        self.snapshot_epochs: set[int] = set()
        self.num_classes = 0
        self.history: list[dict[str, Any]] = []  # checkpointed with the agreement chain
        self.prev_pred: torch.Tensor | None = None
        self._last_seen_epoch = -1

    def _schedule(self, max_epochs: int | None) -> set[int]:
        return self.plan.resolve(max_epochs)

    def _bank_file(self, trainer: L.Trainer) -> Path:
        return Path(self.opts.bank_path) if self.opts.bank_path else RunFolder.of(trainer).regions_bank

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the model and data, then load or make the plane bank (every rank checks; rank 0
        writes it)."""
        if stage != "fit":
            return
        dm = trainer.datamodule
        task = getattr(pl_module, "task", "classification")
        check(task == "classification", "decision regions need a classification model", task,
              "Remove callbacks/regions.yaml for regression runs.")
        self.opts.check_fit(pl_module, dm)
        members = getattr(pl_module, "num_members", 1)
        check_map_size(self.opts.num_planes, self.opts.resolution, members, available_bytes("cpu"))
        self.num_classes = int(getattr(pl_module, "num_classes", 0) or dm.num_classes)
        x, y, y_true = dm.probe_set(None, self.opts.split)
        input_shape = tuple(getattr(pl_module, "input_shape", None) or x.shape[1:])
        check(self.opts.policy != "mislabelled" or self._bank_file(trainer).is_file()
              or bool((y != y_true).any()), "policy 'mislabelled' "
              "needs mislabelled samples (y != y_true), but the split has none", 0,
              "Train with label noise (--data.label_noise 0.15) or use another policy.")
        self.bank = plane_bank_for(self._bank_file(trainer), x, y, y_true, input_shape, self.opts,
                                   write=trainer.global_rank == 0)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.snapshot_epochs = self._schedule(trainer.max_epochs)  # after every setup (IMP)
        if 0 in self.snapshot_epochs and trainer.current_epoch == 0 and not self._done(0):
            self._snapshot(trainer, pl_module, 0)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        self._last_seen_epoch = epoch
        if epoch in self.snapshot_epochs and not self._done(epoch):
            self._snapshot(trainer, pl_module, epoch)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Snapshot the final net if training stopped off schedule, then draw the summary."""
        if self._last_seen_epoch > 0 and not self._done(self._last_seen_epoch):
            self._snapshot(trainer, pl_module, self._last_seen_epoch)
        if trainer.global_rank == 0 and self.history and self.opts.render_planes > 0:
            from overparam_lit.regions.render import history_pictures

            run = RunFolder.of(trainer)
            pics = history_pictures(self.history, run.regions, self.bank, self.opts.render_planes,
                                    self.opts.film_plane, self.num_classes)
            for key in ("overview", "filmstrip") if pics and self.opts.log_images else ():
                log_image(trainer, f"regions/{key}", pics[key])
        trainer.strategy.barrier("regions_fit_end")

    def _done(self, epoch: int) -> bool:
        return any(h["epoch"] == epoch for h in self.history)

    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        if trainer.global_rank == 0:
            self._compute(trainer, pl_module, epoch)
        else:
            self.history.append({"epoch": epoch})  # the same bookkeeping as rank 0
        trainer.strategy.barrier("regions_snapshot")

    def _compute(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        from overparam_lit.regions import measure  # scipy loads with the first snapshot

        assert self.bank is not None
        maps = label_maps(pl_module, self.bank, batch_size=self.opts.batch_size)
        rows = pl_module.member_rows() if getattr(pl_module, "members", None) is not None else None
        prev = None if self.prev_pred is None else self.prev_pred.numpy()
        snap = measure(maps, self.bank, self.num_classes, self.opts.min_region_size, prev,
                       None if rows is None else [r["width"] for r in rows])
        self.prev_pred = torch.from_numpy(maps.pred).clone()
        metrics = {"regions/epoch": float(epoch), **snap.metrics}
        log_scalars(trainer, metrics, step=trainer.global_step)
        run, step = RunFolder.of(trainer), int(trainer.global_step)
        npz = run.regions_maps(epoch)
        atomic_save_npz(npz, epoch=np.int64(epoch), step=np.int64(step), **snap.arrays, **maps.arrays())
        entry: dict[str, Any] = {"epoch": epoch, "step": step, "maps": npz.name,
                                 **{k: float(v) for k, v in metrics.items()}}
        if rows is not None:
            entry["members"] = [{**r, **m} for r, m in zip(rows, snap.members or [], strict=True)]
        if self.opts.render_planes > 0:
            from overparam_lit.regions.render import snapshot_picture

            png = snapshot_picture(maps, self.bank, self.opts.render_planes, self.num_classes,
                                   run.regions_picture(epoch), epoch, metrics["regions/fragmentation"])
            entry["picture"] = png.name
            if self.opts.log_images:
                log_image(trainer, "regions/planes", png, caption=f"epoch {epoch}")
        self.history.append(entry)
        atomic_write_json({"bank": str(self._bank_file(trainer)), "snapshots": self.history},
                          run.regions_history)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The agreement chain (previous map) and the snapshot history (weights-only safe)."""
        return {"history": self.history, "prev_pred": self.prev_pred,
                "last_seen_epoch": self._last_seen_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the agreement chain of a resumed run."""
        self.history = list(state_dict.get("history", []))
        self.prev_pred = state_dict.get("prev_pred")
        self._last_seen_epoch = int(state_dict.get("last_seen_epoch", -1))

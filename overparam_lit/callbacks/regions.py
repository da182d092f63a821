"""``DecisionRegions``: decision-region snapshots on a fixed plane bank during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from overparam_lit.regions import (
    POLICIES,
    PlaneBank,
    agreement,
    anchor_consistency,
    boundary_fraction,
    cohen_kappa,
    fragmentation,
    input_plane_bank,
    label_maps,
    load_label_maps,
    make_plane_bank,
)
from overparam_lit.utils import (
    atomic_save_npz,
    atomic_write_json,
    check,
    log_image,
    log_scalars,
    run_dir,
)


class DecisionRegions(L.Callback):
    """Snapshots of a classifier's decision regions on a fixed bank of planes.

    At each scheduled epoch the model's predicted class is computed on every grid point of
    every plane (one forward pass in eval mode, no gradients), and the callback logs

    - ``regions/fragmentation``: mean over planes of connected regions per class present
      (1 = every class on the plane is one piece; see :class:`overparam_lit.regions.Fragmentation`),
    - ``regions/fragmentation_raw``: mean regions per plane (all classes),
    - ``regions/fragmentation_per_class/<c>``: mean regions of class ``c`` where it appears,
    - ``regions/agreement`` and ``regions/kappa``: against the previous snapshot,
    - ``regions/boundary_fraction``, ``regions/anchor_consistency`` (anchors predicted as
      the label trained on) and ``regions/anchor_consistency_true`` (as the clean label),
    - ``regions/epoch``: the x axis of the series (completed epochs; 0 is the initial net).

    Artifacts under ``run_dir/regions/``: ``bank.pt`` (the planes, reloaded if present),
    ``maps_epochNNNN.npz`` (pred, confidence, margin, anchor_pred), ``epochNNNN.png``,
    ``history.json``, and at the end ``overview.png`` (planes x snapshots),
    ``filmstrip.png`` and ``filmstrip.gif`` (one plane through training).

    Under DDP the snapshot is computed once, by rank 0 on the unwrapped LightningModule, while
    the other ranks wait at a barrier. Eval mode means batch norm uses running statistics, so
    the forward pass needs no collectives and cannot deadlock.

    Args:
        num_planes: planes through anchor triples (ignored for the 2-D input plane).
        resolution: grid points per plane axis (>= 2).
        policy: anchor policy: ``random``, ``distinct_classes``, ``same_class``,
            ``mislabelled``.
        split: data split the anchors come from (``train``, ``val`` or ``test``).
        margin: fraction of the anchors' extent added around them.
        seed: seed of the anchor draw.
        plane: ``auto`` (the input plane for 2-D data, otherwise planes through anchors),
            ``anchors`` or ``input``.
        bank_path: file of a bank to use; made there if missing. Share one file between the
            runs of a sweep so every seed and width sees identical planes. Default:
            ``run_dir/regions/bank.pt``.
        schedule: ``log`` (``num_snapshots`` epochs log-spaced up to ``max_epochs``) or
            ``every`` (every ``every_n_epochs`` epochs); the last epoch is always included.
        num_snapshots: snapshots of the log schedule (before deduplication).
        every_n_epochs: period of the ``every`` schedule.
        epochs: explicit list of completed epochs to snapshot (overrides ``schedule``).
        at_init: also snapshot the initial net (epoch 0).
        min_region_size: regions smaller than this many pixels are not counted.
        batch_size: grid points per forward pass.
        render_planes: planes drawn in each picture.
        film_plane: the plane of the filmstrip and GIF.
        log_images: send pictures to W&B when a W&B logger is attached.
    """

    def __init__(
        self,
        num_planes: int = 16,
        resolution: int = 64,
        policy: str = "distinct_classes",
        split: str = "train",
        margin: float = 0.5,
        seed: int = 0,
        plane: Literal["auto", "anchors", "input"] = "auto",
        bank_path: str | None = None,
        schedule: Literal["log", "every"] = "log",
        num_snapshots: int = 8,
        every_n_epochs: int = 1,
        epochs: list[int] | None = None,
        at_init: bool = True,
        min_region_size: int = 1,
        batch_size: int = 8192,
        render_planes: int = 4,
        film_plane: int = 0,
        log_images: bool = True,
    ) -> None:
        super().__init__()
        check(isinstance(num_planes, int) and num_planes >= 1, "num_planes must be an integer >= 1",
              num_planes, "Set num_planes to e.g. 16.")
        check(isinstance(resolution, int) and resolution >= 2,
              "plane resolution must be an integer >= 2 (grid points per axis)", resolution,
              "Set resolution to e.g. 64.")
        check(policy in POLICIES, "unknown anchor policy", policy,
              f"Use one of {', '.join(POLICIES)}.")
        check(split in ("train", "val", "test"), "unknown split", split,
              "Use 'train', 'val' or 'test'.")
        check(margin >= 0, "margin must be >= 0", margin, "Set margin to e.g. 0.5.")
        check(plane in ("auto", "anchors", "input"), "unknown plane kind", plane,
              "Use 'auto', 'anchors' or 'input'.")
        check(schedule in ("log", "every"), "unknown schedule", schedule, "Use 'log' or 'every'.")
        check(num_snapshots >= 1, "num_snapshots must be >= 1", num_snapshots, "Use e.g. 8.")
        check(every_n_epochs >= 1, "every_n_epochs must be >= 1", every_n_epochs, "Use e.g. 5.")
        check(epochs is None or all(int(e) >= 0 for e in epochs),
              "snapshot epochs must be >= 0", epochs, "List completed epochs, e.g. [0, 1, 10].")
        check(min_region_size >= 1, "min_region_size must be >= 1", min_region_size, "Use 1.")
        check(batch_size >= 1, "batch_size must be >= 1", batch_size, "Use e.g. 8192.")
        check(render_planes >= 0, "render_planes must be >= 0", render_planes, "Use e.g. 4.")
        self.num_planes, self.resolution, self.policy, self.split = num_planes, resolution, policy, split
        self.margin, self.seed, self.plane, self.bank_path = margin, seed, plane, bank_path
        self.schedule, self.num_snapshots, self.every_n_epochs = schedule, num_snapshots, every_n_epochs
        self.epochs = None if epochs is None else sorted({int(e) for e in epochs})
        self.at_init, self.min_region_size, self.batch_size = at_init, min_region_size, batch_size
        self.render_planes, self.film_plane, self.log_images = render_planes, film_plane, log_images
        self.bank: PlaneBank | None = None
        self.snapshot_epochs: set[int] = set()
        self.num_classes = 0
        # checkpointed: the agreement chain and the history of snapshots
        self.history: list[dict[str, Any]] = []
        self.prev_pred: torch.Tensor | None = None
        self._last_seen_epoch = -1

    # ---- setup ---------------------------------------------------------------------------
    def _schedule(self, max_epochs: int | None) -> set[int]:
        if self.epochs is not None:
            chosen = set(self.epochs)
        else:
            check(
                max_epochs is not None and max_epochs > 0,
                "the regions schedule needs trainer.max_epochs (a positive number of epochs)",
                max_epochs,
                "Set --trainer.max_epochs, or give the callback an explicit 'epochs' list.",
            )
            assert max_epochs is not None
            if self.schedule == "log":
                chosen = set(np.unique(np.round(np.geomspace(1, max_epochs, self.num_snapshots)))
                             .astype(int).tolist())
            else:
                chosen = set(range(self.every_n_epochs, max_epochs + 1, self.every_n_epochs))
            chosen.add(int(max_epochs))
        if self.at_init:
            chosen.add(0)
        return chosen

    def _bank_file(self, trainer: L.Trainer) -> Path:
        return Path(self.bank_path) if self.bank_path else run_dir(trainer) / "regions" / "bank.pt"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the model and data, then load or make the plane bank (on every rank, so a
        bad configuration fails the same way everywhere; only rank 0 writes it)."""
        if stage != "fit":
            return
        task = getattr(pl_module, "task", "classification")
        check(task == "classification", "decision regions need a classification model", task,
              "Remove callbacks/regions.yaml for regression runs.")
        dm = trainer.datamodule
        check(dm is not None and hasattr(dm, "probe_set"),
              "DecisionRegions needs a data module with probe_set()", type(dm).__name__,
              "Use an overparam_lit.data module (ArrayDataModule subclass).")
        self.num_classes = int(getattr(pl_module, "num_classes", 0) or dm.num_classes)
        self.snapshot_epochs = self._schedule(trainer.max_epochs)
        x, y, y_true = dm.probe_set(None, self.split)
        input_shape = tuple(getattr(pl_module, "input_shape", None) or x.shape[1:])
        path = self._bank_file(trainer)
        if path.exists():
            bank = PlaneBank.load(path)
            bank.check_input_shape(input_shape)
            bank.check_input_shape(tuple(x.shape[1:]))
        else:
            use_input = self.plane == "input" or (self.plane == "auto" and input_shape == (2,))
            if use_input:
                check(input_shape == (2,), "plane='input' needs 2-D inputs", input_shape,
                      "Use plane='anchors' (or 'auto') for this data.")
                bank = input_plane_bank(x, y, y_true, self.resolution, min(self.margin, 0.25),
                                        seed=self.seed, split=self.split)
            else:
                bank = make_plane_bank(x, y, y_true, self.num_planes, self.resolution,
                                       self.policy, self.margin, self.seed, self.split)
            bank.check_input_shape(input_shape)
            if trainer.global_rank == 0:
                bank.save(path)
        check(0 <= self.film_plane < bank.num_planes, "film_plane is not a plane of the bank",
              self.film_plane, f"Choose a plane in [0, {bank.num_planes}).")
        self.bank = bank

    # ---- snapshots -----------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if 0 in self.snapshot_epochs and trainer.current_epoch == 0 and not self._done(0):
            self._snapshot(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        self._last_seen_epoch = epoch
        if epoch in self.snapshot_epochs and not self._done(epoch):
            self._snapshot(trainer, pl_module, epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Snapshot the final net if training stopped off schedule, then draw the summary."""
        if self._last_seen_epoch > 0 and not self._done(self._last_seen_epoch):
            self._snapshot(trainer, pl_module, self._last_seen_epoch)
        if trainer.global_rank == 0 and self.history:
            self._render_summary(trainer)
        trainer.strategy.barrier("regions_fit_end")

    def _done(self, epoch: int) -> bool:
        return any(h["epoch"] == epoch for h in self.history)

    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        if trainer.global_rank == 0:
            self._compute(trainer, pl_module, epoch)
        else:
            # keep the same bookkeeping as rank 0 (so _done agrees), without the numbers
            self.history.append({"epoch": epoch})
        trainer.strategy.barrier("regions_snapshot")

    def _compute(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        assert self.bank is not None
        maps = label_maps(pl_module, self.bank, batch_size=self.batch_size)
        frag = fragmentation(maps.pred, self.num_classes, self.min_region_size)
        metrics: dict[str, float] = {
            "regions/epoch": float(epoch),
            "regions/fragmentation": frag.mean_normalised,
            "regions/fragmentation_raw": frag.mean_raw,
            "regions/boundary_fraction": boundary_fraction(maps.pred),
        }
        for c, v in enumerate(frag.per_class):
            if np.isfinite(v):
                metrics[f"regions/fragmentation_per_class/{c}"] = float(v)
        if maps.anchor_pred.size:
            metrics["regions/anchor_consistency"] = anchor_consistency(
                maps.anchor_pred, self.bank.anchor_y.numpy())
            metrics["regions/anchor_consistency_true"] = anchor_consistency(
                maps.anchor_pred, self.bank.anchor_y_true.numpy())
        pred = torch.from_numpy(maps.pred)
        if self.prev_pred is not None and self.prev_pred.shape == pred.shape:
            metrics["regions/agreement"] = agreement(self.prev_pred, pred)
            metrics["regions/kappa"] = cohen_kappa(self.prev_pred, pred, self.num_classes)
        self.prev_pred = pred.clone()
        log_scalars(trainer, metrics, step=trainer.global_step)

        out = run_dir(trainer) / "regions"
        npz = out / f"maps_epoch{epoch:04d}.npz"
        atomic_save_npz(npz, epoch=np.int64(epoch), step=np.int64(trainer.global_step),
                        region_counts=frag.counts, **maps.arrays())
        entry = {"epoch": epoch, "step": int(trainer.global_step), "maps": npz.name,
                 **{k: float(v) for k, v in metrics.items()}}
        if self.render_planes > 0:
            from overparam_lit.regions import render

            planes = list(range(min(self.render_planes, self.bank.num_planes)))
            png = render.plane_row(
                maps.pred, self.bank, planes, self.num_classes, out / f"epoch{epoch:04d}.png",
                confidence=maps.confidence,
                title=f"epoch {epoch}: {frag.mean_normalised:.2f} regions per class",
                cell=4.0 if len(planes) == 1 else 2.2,
            )
            entry["picture"] = png.name
            if self.log_images:
                log_image(trainer, "regions/planes", png, caption=f"epoch {epoch}")
        self.history.append(entry)
        atomic_write_json({"bank": str(self._bank_file(trainer)), "snapshots": self.history},
                          out / "history.json")

    def _render_summary(self, trainer: L.Trainer) -> None:
        from overparam_lit.regions import render

        assert self.bank is not None
        out = run_dir(trainer) / "regions"
        done = [h for h in self.history if "maps" in h and (out / h["maps"]).exists()]
        if not done or self.render_planes == 0:
            return
        preds = [load_label_maps(str(out / h["maps"])).pred for h in done]
        titles = [f"epoch {h['epoch']}" for h in done]
        cols = np.unique(np.linspace(0, len(done) - 1, min(8, len(done))).round().astype(int))
        planes = list(range(min(self.render_planes, self.bank.num_planes)))
        render.plane_grid([preds[i] for i in cols], self.bank, planes, self.num_classes,
                          [titles[i] for i in cols], out / "overview.png")
        film = render.filmstrip(preds, self.bank, self.film_plane, self.num_classes, titles,
                                out / "filmstrip.png")
        render.animate(preds, self.bank, self.film_plane, self.num_classes, titles,
                       out / "filmstrip.gif")
        if self.log_images:
            log_image(trainer, "regions/overview", out / "overview.png")
            log_image(trainer, "regions/filmstrip", film)

    # ---- checkpoint state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The agreement chain (previous map) and the snapshot history (weights-only safe)."""
        return {
            "history": self.history,
            "prev_pred": self.prev_pred,
            "last_seen_epoch": self._last_seen_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the agreement chain of a resumed run."""
        self.history = list(state_dict.get("history", []))
        self.prev_pred = state_dict.get("prev_pred")
        self._last_seen_epoch = int(state_dict.get("last_seen_epoch", -1))

"""Settings of decision-region snapshots during training, and the plane bank of a data set.

:class:`RegionOptions` holds and checks the options of the
:class:`~overparam_lit.callbacks.regions.DecisionRegions` callback and gives its snapshot
schedule; :func:`plane_bank_for` loads a saved bank or makes the bank of a data set;
:func:`check_map_size` refuses snapshots larger than the memory at hand. No Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from overparam_lit.regions.maps import map_bytes
from overparam_lit.regions.planes import POLICIES, PlaneBank, input_plane_bank, make_plane_bank
from overparam_lit.schedules import ProbeSchedule
from overparam_lit.utils import check

SPLITS = ("train", "val", "test")
PLANES = ("auto", "anchors", "input")


def check_map_size(num_planes: int, resolution: int, members: int, free: int | None) -> None:
    """Refuse one snapshot's maps (:func:`~overparam_lit.regions.map_bytes`) larger than half the
    ``free`` bytes (``None``: unknown, anything goes)."""
    need = map_bytes(num_planes, resolution, members)
    check(free is None or need <= 0.5 * free,
          f"one region snapshot would need {need / 1024**3:.3g} GiB of maps ({num_planes} planes x "
          f"{resolution}^2 points x {members} member(s)), more than half the "
          f"{(free or 0) / 1024**3:.3g} GiB available", resolution,
          "Use a smaller resolution (64-256 is typical) or fewer planes.")


@dataclass(frozen=True, kw_only=True)
class RegionOptions:
    """The settings of decision-region snapshots (the options of
    :class:`~overparam_lit.callbacks.regions.DecisionRegions`), checked on construction;
    :attr:`plan` is the snapshot schedule in completed epochs (``epochs`` overrides ``schedule``).

    Args:
        num_planes: planes through anchor triples (ignored for the 2-D input plane).
        resolution: grid points per plane axis (>= 2).
        policy: anchor policy: ``random``, ``distinct_classes``, ``same_class``, ``mislabelled``.
        split: data split the anchors come from (``train``, ``val`` or ``test``).
        margin: fraction of the anchors' extent added around them.
        seed: seed of the anchor draw.
        plane: ``auto`` (the input plane for 2-D data, otherwise anchor planes), ``anchors`` or ``input``.
        bank_path: file of a bank to use, made there if missing; share one between the runs of a
            sweep so every seed and width sees identical planes (default ``run_dir/regions/bank.pt``).
        schedule: ``log`` (``num_snapshots`` log-spaced epochs) or ``every`` (``every_n_epochs``);
            the last epoch is always included. Resolved when training starts, after every
            callback's setup (an IMP callback's longer training is counted).
        num_snapshots: snapshots of the log schedule (before duplicates merge).
        every_n_epochs: period of the ``every`` schedule.
        epochs: explicit completed epochs to snapshot (overrides ``schedule``).
        at_init: also snapshot the initial net (epoch 0).
        min_region_size: regions smaller than this many pixels are not counted.
        batch_size: grid points per forward pass.
        render_planes: planes drawn in each picture.
        film_plane: the plane of the filmstrip and GIF.
        log_images: send pictures to W&B when a W&B logger is attached.
    """

    num_planes: int = 16
    resolution: int = 64
    policy: str = "distinct_classes"
    split: str = "train"
    margin: float = 0.5
    seed: int = 0
    plane: Literal["auto", "anchors", "input"] = "auto"
    bank_path: str | None = None
    schedule: Literal["log", "every"] = "log"
    num_snapshots: int = 8
    every_n_epochs: int = 1
    epochs: list[int] | None = None
    at_init: bool = True
    min_region_size: int = 1
    batch_size: int = 8192
    render_planes: int = 4
    film_plane: int = 0
    log_images: bool = True
    plan: ProbeSchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check(isinstance(self.num_planes, int) and self.num_planes >= 1, "num_planes must be an integer >= 1",
              self.num_planes, "Set num_planes to e.g. 16.")
        check(isinstance(self.resolution, int) and self.resolution >= 2,
              "plane resolution must be an integer >= 2 (grid points per axis)", self.resolution,
              "Set resolution to e.g. 64.")
        check(self.policy in POLICIES, "unknown anchor policy", self.policy,
              f"Use one of {', '.join(POLICIES)}.")
        check(self.split in SPLITS, "unknown split", self.split, "Use 'train', 'val' or 'test'.")
        check(self.margin >= 0, "margin must be >= 0", self.margin, "Set margin to e.g. 0.5.")
        check(self.plane in PLANES, "unknown plane kind", self.plane, "Use 'auto', 'anchors' or 'input'.")
        check(self.schedule in ("log", "every"), "unknown schedule", self.schedule, "Use 'log' or 'every'.")
        check(self.min_region_size >= 1, "min_region_size must be >= 1", self.min_region_size, "Use 1.")
        check(self.batch_size >= 1, "batch_size must be >= 1", self.batch_size, "Use e.g. 8192.")
        check(self.render_planes >= 0, "render_planes must be >= 0", self.render_planes, "Use e.g. 4.")
        epochs = None if self.epochs is None else [int(e) for e in self.epochs]
        object.__setattr__(self, "epochs", epochs)
        object.__setattr__(self, "plan", ProbeSchedule("list" if epochs is not None else self.schedule,
                                                       self.every_n_epochs, self.num_snapshots,
                                                       None if epochs is None else tuple(epochs),
                                                       self.at_init))

    def check_fit(self, module: Any, datamodule: Any) -> None:
        """Refuse a model that is not a classifier, or a data module without ``probe_set()``."""
        task = getattr(module, "task", "classification")
        check(task == "classification", "decision regions need a classification model", task,
              "Take decision-region snapshots of classifiers only.")
        check(datamodule is not None and hasattr(datamodule, "probe_set"),
              "DecisionRegions needs a data module with probe_set()",
              type(datamodule).__name__, "Use an overparam_lit.data module (ArrayDataModule subclass).")

    def uses_input_plane(self, input_shape: tuple[int, ...]) -> bool:
        """Whether snapshots are taken on the input plane itself (``input``, or ``auto`` for 2-D
        inputs) rather than on planes through anchor triples."""
        return self.plane == "input" or (self.plane == "auto" and tuple(input_shape) == (2,))


def plane_bank_for(path: str | Path, x: Tensor, y: Tensor, y_true: Tensor, input_shape: tuple[int, ...],
                   opts: RegionOptions, write: bool = True) -> PlaneBank:
    """The plane bank at ``path`` (checked against ``input_shape`` and the data's shape), or, when
    there is none, the bank ``opts`` describes for the data set ``(x, y, y_true)``, saved to
    ``path`` when ``write``; refuses a ``film_plane`` that is not one of its planes."""
    path = Path(path)
    if path.exists():
        bank = PlaneBank.load(path)
        bank.check_input_shape(input_shape)
        bank.check_input_shape(tuple(x.shape[1:]))
    else:
        if opts.uses_input_plane(input_shape):
            check(tuple(input_shape) == (2,), "plane='input' needs 2-D inputs", input_shape,
                  "Use plane='anchors' (or 'auto') for this data.")
            bank = input_plane_bank(x, y, y_true, opts.resolution, min(opts.margin, 0.25),
                                    seed=opts.seed, split=opts.split)
        else:
            bank = make_plane_bank(x, y, y_true, opts.num_planes, opts.resolution,
                                   opts.policy, opts.margin, opts.seed, opts.split)
        bank.check_input_shape(input_shape)
        if write:
            bank.save(path)
    check(0 <= opts.film_plane < bank.num_planes, "film_plane is not a plane of the bank",
          opts.film_plane, f"Choose a plane in [0, {bank.num_planes}).")
    return bank

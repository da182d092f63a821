"""``ArrayDataModule``: small data sets held as tensors on the training device, batched by indexing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import lightning as L
import torch
from torch import Tensor

from overparam_lit.data.noise import check_noise, corrupt_labels
from overparam_lit.models.steps import StepChunk
from overparam_lit.utils import check

Augment = Callable[[Tensor, torch.Generator], Tensor]

LOADED = ("x_train", "y_train", "x_test", "y_test")
"""The tensors :meth:`ArrayDataModule.load` returns."""

RUN_BATCHES, BLOCK_BYTES = 32, 4 << 20
"""Consecutive batches are indexed together (a call's, or this many of one step each), in blocks
of at most this many bytes a tensor."""


def _alignment(device: torch.device) -> int | None:
    """Bytes to which a new tensor on ``device`` is aligned (PyTorch's CPU allocator: 64; CUDA's
    caching allocator: 512); ``None`` where it is not known."""
    return {"cpu": 64, "cuda": 512}.get(device.type)


class TensorBatches:
    """An iterable of ``(x, y, y_true)`` batches cut from tensors by indexing.

    The tensors are moved once to ``device`` (the training device); every epoch draws a
    fresh permutation from ``seed`` and the epoch number, so runs (and resumed runs) see the
    same order. Under DDP each rank takes every ``world_size``-th index of the permutation,
    training shards trimmed to equal length so every rank takes the same number of steps.
    ``calls_fn``, asked when an epoch's iteration starts, may cut the epoch's batches into
    :class:`~overparam_lit.models.steps.StepChunk` calls of several optimizer steps (the model's
    ``take_epoch_calls``); ``len()`` stays the number of batches. ``replay_fn``, asked when an
    epoch's iteration starts, may return ``(step, period)``: the epoch's first batch is then batch
    ``step % period`` of an order that restarts every ``period`` batches (its ``e``-th run
    through the data drawn from ``seed`` and ``e``, as the per-epoch order draws epoch ``e``).
    Outside a replay, a call's batches (or :data:`RUN_BATCHES` consecutive ones) are indexed
    together, one indexing per tensor rather than per batch, where that gives exactly the batches
    of their own indexing (:meth:`_block_batches`).
    """

    def __init__(
        self,
        tensors: tuple[Tensor, Tensor, Tensor],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch_fn: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        augment: Augment | None = None,
        drop_last: bool = False,
        calls_fn: Callable[[], list[int] | None] | None = None,
        replay_fn: Callable[[], tuple[int, int] | None] | None = None,
    ) -> None:
        self.tensors = tuple(t.to(device) for t in tensors)
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.epoch_fn = shuffle, int(seed), epoch_fn
        self.rank, self.world_size = int(rank), int(world_size)
        self.augment, self.drop_last = augment, drop_last
        self.calls_fn, self.replay_fn = calls_fn, replay_fn
        self.device = torch.device(device)
        n = self.tensors[0].shape[0]
        self.shard_size = n // self.world_size if shuffle else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def _indices(self, gen: torch.Generator) -> Tensor:
        n = self.tensors[0].shape[0]
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        return order[self.rank :: self.world_size][: self.shard_size].to(self.device)

    def _replayed(self, step: int, period: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        x, y, y_true = self.tensors
        bs, per_epoch, drawn = self.batch_size, len(self), (-1, None)
        for i in range(per_epoch):
            epoch, j = divmod((step + i) % period, per_epoch)
            if drawn[0] != epoch:
                drawn = (epoch, self._indices(torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)))
            b = drawn[1][j * bs : (j + 1) * bs]
            xb = x[b]
            if self.augment is not None:
                gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_007 + j)
                xb = self.augment(xb, gen)
            yield xb, y[b], y_true[b]

    def _block_batches(self, tensor: Tensor) -> int:
        """How many consecutive batches of ``tensor`` one indexing takes (1: each its own). A batch
        cut from a block is a view that starts where a tensor of its own would be aligned, or holds
        integers (exact arithmetic), so every kernel computes exactly as on a batch of its own."""
        batch = self.batch_size * tensor[0].numel() * tensor.element_size()
        exact = not (tensor.is_floating_point() or tensor.is_complex())
        align = _alignment(self.device)
        if not exact and (align is None or batch % align):
            return 1
        return max(1, BLOCK_BYTES // max(1, batch))

    def _batches(self, calls: list[int] | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        replay = self.replay_fn() if self.replay_fn is not None and self.shuffle else None
        if replay is not None:
            yield from self._replayed(*replay)
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.epoch_fn()))
        idx = self._indices(gen)
        bs, n = self.batch_size, len(self)
        blocks = [self._block_batches(t) for t in self.tensors]
        i = 0
        for run in calls or [RUN_BATCHES] * -(-n // RUN_BATCHES):
            end = min(i + run, n)
            cut: list[list[Tensor]] = [[] for _ in self.tensors]  # each tensor's batches i..end
            for t, per, out in zip(self.tensors, blocks, cut, strict=True):
                for j in range(i, end, per):
                    block = t[idx[j * bs : min(j + per, end) * bs]]
                    out.extend(block[k * bs : (k + 1) * bs] for k in range(min(per, end - j)))
            for xb, yb, tb in zip(*cut, strict=True):
                if self.augment is not None:
                    xb = self.augment(xb, gen)
                yield xb, yb, tb
            i = end

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor] | StepChunk]:
        calls = self.calls_fn() if self.calls_fn is not None else None
        if calls is None:
            yield from self._batches()
            return
        batches = self._batches(calls)  # the same batches, cut into calls of several optimizer steps
        for size in calls:
            yield StepChunk(batches, size)


class ArrayDataModule(L.LightningDataModule):
    """Base of every overparam-lit data module.

    Subclasses set ``input_shape``, ``num_classes`` and ``task`` in ``__init__`` (the CLI links
    them into the model) and implement :meth:`load`. The base class owns what every data set
    shares: ``train_subset``, a validation split, label noise (both label sets are kept),
    batching on the device, and a fixed :meth:`probe_set` for the study callbacks.

    Args:
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size for validation and test.
        label_noise: fraction of corrupted labels in [0, 1); applied to the training set,
            and with other seeds to the validation and test sets for the noisy test error.
        noise_model: ``uniform_incorrect``, ``uniform`` or ``balanced_flip``.
        noise_seed: seed of the label noise (independent of the model seed).
        train_subset: keep this many training samples (drawn with ``subset_seed``).
        subset_seed: seed of the subset draw and the validation split.
        val_size: training samples held out for validation; 0 validates on the test split.
        shuffle_seed: seed of the per-epoch batch order.
    """

    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    task: Literal["classification", "regression"] = "classification"

    def __init__(
        self,
        batch_size: int = 100,
        eval_batch_size: int = 1000,
        label_noise: float = 0.0,
        noise_model: str = "uniform_incorrect",
        noise_seed: int = 0,
        train_subset: int | None = None,
        subset_seed: int = 0,
        val_size: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        check(batch_size >= 1, "batch_size must be >= 1", batch_size, "Set --data.batch_size.")
        check(
            eval_batch_size >= 1, "eval_batch_size must be >= 1", eval_batch_size,
            "Set --data.eval_batch_size.",
        )
        check_noise(label_noise, noise_model)
        check(
            train_subset is None or train_subset >= 1,
            "train_subset must be a positive number of samples",
            train_subset,
            "Set --data.train_subset to e.g. 1000, or leave it unset for all samples.",
        )
        check(val_size >= 0, "val_size must be >= 0", val_size, "Set --data.val_size.")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.label_noise, self.noise_model, self.noise_seed = float(label_noise), noise_model, noise_seed
        self.train_subset, self.subset_seed, self.val_size = train_subset, subset_seed, int(val_size)
        self.shuffle_seed = int(shuffle_seed)
        self.splits: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.replay_period: int | None = None

    def replay_order(self, period: int | None) -> None:
        """Replay the training batch order every ``period`` optimizer steps (one batch per step):
        step ``s`` trains on the batch that step ``s % period`` trained on (IMP's
        ``replay_order``: every level sees level 0's batches). ``None`` restores the order drawn
        per epoch of the whole fit."""
        check(period is None or period >= 1, "the replay period must be a positive number of steps", period,
              "Give the optimizer steps of one IMP level.")
        self.replay_period = None if period is None else int(period)

    # ---- what a data set provides ---------------------------------------------------------
    def load(self) -> dict[str, Tensor]:
        """Return ``x_train``, ``y_train``, ``x_test``, ``y_test`` as CPU tensors (float inputs
        of shape ``(N, *input_shape)``; long labels, or float targets for regression)."""
        raise NotImplementedError

    def train_augment(self) -> Augment | None:
        """Batch augmentation applied on the device to training batches (none by default)."""
        return None

    # ---- shared machinery -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load once, then apply subset, validation split and label noise."""
        if self.splits:
            return
        raw = self.load()
        x, y = raw["x_train"], raw["y_train"]
        n = x.shape[0]
        gen = torch.Generator().manual_seed(int(self.subset_seed))
        order = torch.randperm(n, generator=gen)
        check(
            self.val_size < n,
            "val_size must be smaller than the training set",
            self.val_size,
            f"The training set has {n} samples; choose a smaller --data.val_size.",
        )
        val_idx, train_idx = order[: self.val_size].sort().values, order[self.val_size :]
        if self.train_subset is not None:
            check(
                self.train_subset <= train_idx.numel(),
                f"train_subset is larger than the {train_idx.numel()} training samples available",
                self.train_subset,
                f"Set --data.train_subset to at most {train_idx.numel()}.",
            )
            train_idx = train_idx[: self.train_subset]
        train_idx = train_idx.sort().values  # keep the data set's own order
        splits = {"train": (x[train_idx], y[train_idx]), "test": (raw["x_test"], raw["y_test"])}
        if self.val_size > 0:
            splits["val"] = (x[val_idx], y[val_idx])
        for i, (name, (xs, ys)) in enumerate(splits.items()):
            if self.task == "classification" and self.label_noise > 0:
                noisy = corrupt_labels(
                    ys, self.num_classes, self.label_noise, self.noise_model, self.noise_seed + 7919 * i
                )
            else:
                noisy = ys.clone()
            self.splits[name] = (xs.float().contiguous(), noisy, ys)
        if "val" not in self.splits:
            self.splits["val"] = self.splits["test"]

    def _replay_at(self) -> tuple[int, int] | None:
        """``(global step, replay period)`` while the order is replayed, else ``None``."""
        return None if self.replay_period is None else (self.trainer.global_step, self.replay_period)

    def _batches(self, split: str, train: bool) -> TensorBatches:
        self.setup()
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        return TensorBatches(
            self.splits[split],
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.shuffle_seed,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            device=device,
            augment=self.train_augment() if train else None,
            calls_fn=getattr(trainer.lightning_module, "take_epoch_calls", None)
            if train and trainer is not None else None,
            replay_fn=self._replay_at if train and trainer is not None else None,
        )

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", train=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", train=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", train=False)

    def predict_dataloader(self) -> TensorBatches:
        return self._batches("test", train=False)

    def probe_set(
        self, num_samples: int | None = None, split: str = "train", seed: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A fixed set ``(x, y, y_true)`` of CPU tensors for the study callbacks.

        The same ``num_samples``, ``split`` and ``seed`` always give the same samples, in the
        same order; ``None`` gives the whole split in its stored order.
        """
        self.setup()
        check(split in self.splits, "unknown split", split, "Use 'train', 'val' or 'test'.")
        x, y, y_true = self.splits[split]
        if num_samples is None:
            return x, y, y_true
        check(
            1 <= num_samples <= x.shape[0],
            f"probe set size must be between 1 and the {x.shape[0]} samples of '{split}'",
            num_samples,
            "Choose a smaller probe size.",
        )
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:num_samples]
        return x[idx], y[idx], y_true[idx]

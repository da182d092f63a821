"""Data modules: label noise, subsets, splits, on-device batching, vision files, bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from overparam_lit.data import (
    CIFAR10,
    MNIST,
    MNIST1D,
    TeacherStudent,
    TensorBatches,
    Toy2D,
)
from overparam_lit.data.augment import random_crop_flip
from overparam_lit.data.noise import corrupt_labels
from overparam_lit.models.steps import StepChunk
from overparam_lit.utils import ConfigError


def test_uniform_incorrect_always_changes_chosen_labels() -> None:
    y = torch.arange(10).repeat(1000)
    noisy = corrupt_labels(y, 10, 0.3, "uniform_incorrect", seed=1)
    changed = (noisy != y).float().mean().item()
    assert abs(changed - 0.3) < 0.02  # every chosen label moves to another class
    # wrong labels spread evenly over the 9 other classes
    counts = torch.bincount((noisy - y)[noisy != y] % 10, minlength=10)[1:].float()
    assert counts.std() / counts.mean() < 0.1


def test_uniform_may_keep_label() -> None:
    y = torch.arange(10).repeat(1000)
    changed = (corrupt_labels(y, 10, 0.3, "uniform", seed=1) != y).float().mean().item()
    assert abs(changed - 0.3 * 0.9) < 0.02


def test_balanced_flip_exact_per_class() -> None:
    y = torch.arange(4).repeat_interleave(torch.tensor([10, 20, 30, 40]))
    noisy = corrupt_labels(y, 4, 0.25, "balanced_flip", seed=3)
    for c, n in enumerate([10, 20, 30, 40]):
        assert int((noisy[y == c] != c).sum()) == round(0.25 * n)


def test_noise_is_seeded_and_both_labels_kept() -> None:
    a = MNIST1D(label_noise=0.15, noise_seed=5)
    b = MNIST1D(label_noise=0.15, noise_seed=5)
    a.setup(), b.setup()
    x, y, y_true = a.splits["train"]
    assert torch.equal(y, b.splits["train"][1])
    assert abs((y != y_true).float().mean().item() - 0.15) < 0.03
    assert not torch.equal(y, y_true)


def test_mnist1d_isolates_global_rng_and_matches_package() -> None:
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    dm = MNIST1D()
    dm.setup()
    assert np.random.rand() == expect_np and random.random() == expect_py
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())
    x, _, y_true = dm.splits["train"]
    assert x.shape == (4000, 1, 40) and dm.splits["test"][0].shape == (1000, 1, 40)
    assert np.allclose(x[:, 0].numpy(), ref["x"].astype(np.float32)) and np.array_equal(y_true, ref["y"])


def test_subset_and_val_split() -> None:
    dm = MNIST1D(train_subset=500, val_size=400)
    dm.setup()
    assert dm.splits["train"][0].shape[0] == 500 and dm.splits["val"][0].shape[0] == 400
    with pytest.raises(ConfigError, match="at most 3600"):
        MNIST1D(train_subset=3601, val_size=400).setup()


@pytest.mark.parametrize("noise", [-0.1, 1.0, 1.5])
def test_bad_label_noise(noise: float) -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        MNIST1D(label_noise=noise)


def test_tensor_batches_shard_ranks_and_cover_epoch() -> None:
    n = 103
    t = (torch.arange(n).float(), torch.arange(n), torch.arange(n))
    shards = [list(TensorBatches(t, 10, shuffle=True, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 6
    seen = torch.cat([b[1] for s in shards for b in s])
    assert seen.numel() == 2 * (n // 2) and seen.unique().numel() == seen.numel()
    again = list(TensorBatches(t, 10, shuffle=True, seed=1, rank=0, world_size=2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(again, shards[0], strict=True))
    evals = [torch.cat([b[1] for b in TensorBatches(t, 7, False, rank=r, world_size=2)]) for r in (0, 1)]
    assert sorted(torch.cat(evals).tolist()) == list(range(n))


@pytest.mark.parametrize("batch_size", [100, 7, 1])
@pytest.mark.parametrize("calls", [None, [32, 5, 1, 32]])
def test_batches_indexed_together_equal_batches_indexed_alone(batch_size: int,
                                                              calls: list[int] | None) -> None:
    """Consecutive batches are cut from one indexing; each equals the batch indexed on its own,
    inputs down to where their memory starts (kernels may take other paths for other alignments),
    and an augmentation draws in the same order."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(700, 1, 40, generator=gen), torch.randint(0, 10, (700,), generator=gen)
    y_true = torch.where(torch.rand(700, generator=gen) < 0.2, (y + 1) % 10, y)
    n = -(-700 // batch_size)
    sizes = None
    if calls is not None:  # the calls cut the epoch's batches; what is left, one batch each
        sizes = []
        for c in calls:
            sizes.append(min(c, n - sum(sizes)))
        sizes = [c for c in sizes if c] + [1] * (n - sum(sizes))

    def noisy(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return xb + torch.rand(xb.shape, generator=g)

    for augment in (None, noisy):
        batches = TensorBatches((x, y, y_true), batch_size, shuffle=True, seed=5, epoch_fn=lambda: 3,
                                augment=augment, calls_fn=lambda: sizes)
        got = [b for item in batches for b in (item if isinstance(item, StepChunk) else [item])]
        g = torch.Generator().manual_seed(5 * 1_000_003 + 3)
        idx = torch.randperm(700, generator=g)
        assert len(got) == n
        for i, (xb, yb, tb) in enumerate(got):
            b = idx[i * batch_size : (i + 1) * batch_size]
            want = (x[b] if augment is None else noisy(x[b], g), y[b], y_true[b])
            for have, ref in zip((xb, yb, tb), want, strict=True):
                assert have.dtype == ref.dtype and have.shape == ref.shape and torch.equal(have, ref)
            assert xb.data_ptr() % 64 == want[0].data_ptr() % 64


def test_random_crop_flip_against_loop() -> None:
    x = torch.randn(6, 3, 8, 8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    gen = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 5, (6,), generator=gen), torch.randint(0, 5, (6,), generator=gen)
    flips = torch.rand(6, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        ref = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], ref.flip(-1) if flips[i] else ref)


def test_toy2d_and_teacher_student() -> None:
    for name in ("spirals", "moons", "circles", "xor", "gaussians"):
        dm = Toy2D(dataset=name, n_train=90, n_test=30)
        dm.setup()
        assert dm.splits["train"][0].shape == (90, 2) and dm.input_shape == (2,)
        assert dm.splits["train"][2].max() < dm.num_classes
    reg = TeacherStudent(input_dim=5, num_classes=2, task="regression", n_train=50, n_test=10)
    reg.setup()
    assert reg.splits["train"][1].shape == (50, 2) and reg.splits["train"][1].dtype == torch.float32
    cls = TeacherStudent(input_dim=5, num_classes=3, task="classification", n_train=300, n_test=10)
    cls.setup()
    assert set(cls.splits["train"][1].tolist()) <= {0, 1, 2}


def test_mnist_reads_idx_files(mnist_root) -> None:
    root, arrays = mnist_root
    dm = MNIST(root=str(root))
    dm.setup()
    x, y, _ = dm.splits["train"]
    assert x.shape == (60, 1, 28, 28) and torch.equal(y, torch.as_tensor(arrays["y_train"]))
    expect = (arrays["x_train"][7] / 255.0 - 0.1307) / 0.3081
    assert np.allclose(x[7, 0].numpy(), expect, atol=1e-5)
    assert dm.splits["test"][0].shape == (20, 1, 28, 28)


def test_cifar10_reads_pickled_batches(cifar10_root) -> None:
    root, arrays = cifar10_root
    dm = CIFAR10(root=str(root))
    dm.setup()
    x, y, _ = dm.splits["train"]
    assert x.shape == (40, 3, 32, 32) and torch.equal(y, torch.as_tensor(arrays["y_train"]))
    img = arrays["x_train"][5].reshape(3, 32, 32) / 255.0
    assert np.allclose(x[5, 1].numpy(), (img[1] - 0.4822) / 0.2435, atol=1e-5)
    assert dm.augment  # Nakkiran's recipe: crop and flip on


def test_missing_vision_folder_is_clear(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        CIFAR10(root=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "--data.download true" in msg and "nowhere" in msg

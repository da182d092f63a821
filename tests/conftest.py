"""Shared fixtures: quiet offline W&B, one CPU thread, tiny data files in real on-disk formats, a
tiny in-memory data set and trainer (:mod:`overparam_lit.testing`), and a 2-process DDP runner."""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

if TYPE_CHECKING:  # imported by the fixtures that need them: Lightning loads only for those tests
    import lightning as L

    from overparam_lit.testing import Blobs

# generated data sets are cached in one folder per test session, never in the user's cache
os.environ["OVERPARAM_LIT_CACHE"] = tempfile.mkdtemp(prefix="overparam-lit-cache-")
atexit.register(shutil.rmtree, os.environ["OVERPARAM_LIT_CACHE"], True)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)
# The second pass of `make test` (pytest -m numeric) sets OVERPARAM_TEST_THREADS to rerun the
# numerically sensitive tests with another thread count, which changes the reduction order of the
# parallel kernels; tolerances that only hold for one summation order fail there.
if os.environ.get("OVERPARAM_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["OVERPARAM_TEST_THREADS"]))

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an uncompressed IDX file (the MNIST format): magic, sizes, big-endian, raw bytes."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic))
        fh.write(struct.pack(f">{array.ndim}I", *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny MNIST folder (60 train, 20 test) in torchvision's layout."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "x_train": rng.integers(0, 256, (60, 28, 28)), "y_train": rng.integers(0, 10, 60),
        "x_test": rng.integers(0, 256, (20, 28, 28)), "y_test": rng.integers(0, 10, 20),
    }
    write_idx(raw / "train-images-idx3-ubyte", arrays["x_train"])
    write_idx(raw / "train-labels-idx1-ubyte", arrays["y_train"])
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["x_test"])
    write_idx(raw / "t10k-labels-idx1-ubyte", arrays["y_test"])
    return tmp_path, arrays


@pytest.fixture
def cifar10_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny CIFAR-10 folder (5 x 8 train, 10 test) as the python pickles of the real release
    (str keys, as Python 2 pickles read with latin-1 encoding give)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    xs, ys = [], []
    for i in range(1, 6):
        data, labels = rng.integers(0, 256, (8, 3072)).astype(np.uint8), rng.integers(0, 10, 8).tolist()
        xs.append(data)
        ys += labels
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": "x"}, fh, protocol=2)
    test, test_labels = rng.integers(0, 256, (10, 3072)).astype(np.uint8), rng.integers(0, 10, 10).tolist()
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": test, "labels": test_labels}, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh, protocol=2)
    arrays = {"x_train": np.concatenate(xs), "y_train": np.array(ys),
              "x_test": test, "y_test": np.array(test_labels)}
    return tmp_path, arrays


@pytest.fixture
def blobs() -> type[Blobs]:
    """The tiny in-memory data set: ``blobs(batch_size=50)`` (Gaussian blobs, 8-D, 4 classes,
    200 train / 100 test), or any other shape, classes and sizes (:class:`overparam_lit.testing.Blobs`)."""
    from overparam_lit.testing import Blobs

    return Blobs


@pytest.fixture
def tiny_trainer() -> Callable[..., L.Trainer]:
    """The tiny trainer: ``tiny_trainer(root, callbacks, max_epochs=2, ...)``, one quiet CPU process
    (:func:`overparam_lit.testing.tiny_trainer`)."""
    from overparam_lit.testing import tiny_trainer

    return tiny_trainer


DDP_TIMEOUT = 300
"""Seconds a two-process DDP script may run before its test fails."""


@pytest.fixture
def run_ddp() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``tests/ddp/<script> <args>`` (two CPU processes, gloo) from the repository root, one
    thread per process and W&B offline; the test fails with the end of the script's stderr unless
    it exits 0 within ``timeout`` seconds. Returns the finished process."""

    def run(script: str, *args: str | Path, timeout: float = DDP_TIMEOUT) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        cmd = [sys.executable, str(REPO / "tests" / "ddp" / script), *(str(a) for a in args)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc

    return run

"""MNIST1D's ``classes`` option: a class subset, relabelled, checked against the package's own data."""

from __future__ import annotations

import numpy as np
import pytest

from overparam_lit.data import MNIST1D
from overparam_lit.data.mnist1d import generate_mnist1d
from overparam_lit.utils import ConfigError


def test_class_subset_keeps_and_relabels_the_named_digits() -> None:
    classes = [7, 2, 5]
    dm = MNIST1D(classes=classes)
    dm.setup()
    assert dm.num_classes == 3 and MNIST1D.num_classes == 10
    ref = generate_mnist1d()
    for split, xk, yk in (("train", "x", "y"), ("test", "x_test", "y_test")):
        keep = np.isin(ref[yk], classes)
        want_y = np.array([classes.index(c) for c in ref[yk][keep]])
        x, y, y_true = dm.splits[split]
        assert np.array_equal(y.numpy(), want_y) and np.array_equal(y_true.numpy(), want_y)
        assert np.array_equal(x[:, 0].numpy(), ref[xk][keep].astype(np.float32))
    # the subset then behaves as any data set: label noise stays within its C classes
    noisy = MNIST1D(classes=classes, label_noise=0.5)
    noisy.setup()
    assert set(noisy.splits["train"][1].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("classes", [[3], [1, 1], [0, 10], [-1, 2]])
def test_bad_class_subsets_are_refused(classes: list[int]) -> None:
    with pytest.raises(ConfigError, match="at least two distinct digits 0-9"):
        MNIST1D(classes=classes)

"""Label-noise models, sampled once with their own seed (pure functions, no Lightning)."""

from __future__ import annotations

import torch
from torch import Tensor

from overparam_lit.utils import check

NOISE_MODELS = ("uniform_incorrect", "uniform", "balanced_flip")


def check_noise(label_noise: float, noise_model: str) -> None:
    """Refuse a noise level outside [0, 1) or an unknown noise model."""
    check(
        isinstance(label_noise, (int, float)) and 0.0 <= float(label_noise) < 1.0,
        "label_noise must lie in [0, 1)",
        label_noise,
        "Set --data.label_noise to a fraction such as 0.15 (0 for clean labels).",
    )
    check(
        noise_model in NOISE_MODELS,
        "unknown label noise model",
        noise_model,
        f"Set --data.noise_model to one of {', '.join(NOISE_MODELS)}.",
    )


def corrupt_labels(
    labels: Tensor, num_classes: int, p: float, model: str = "uniform_incorrect", seed: int = 0
) -> Tensor:
    """Return a noisy copy of integer ``labels``; ``labels`` itself is left untouched.

    - ``uniform_incorrect`` (Nakkiran et al. 2019): each label, with probability ``p``, is
      replaced by a label drawn uniformly from the *other* classes.
    - ``uniform`` (MNIST-1D): with probability ``p`` the label is redrawn uniformly from all
      classes, so it may stay the same.
    - ``balanced_flip``: exactly ``round(p * n_c)`` samples of each class ``c`` get a label
      drawn uniformly from the other classes.
    """
    check_noise(p, model)
    labels = labels.long()
    noisy = labels.clone()
    if p == 0:
        return noisy
    gen = torch.Generator().manual_seed(int(seed))
    n = labels.numel()
    if model == "balanced_flip":
        chosen = torch.zeros(n, dtype=torch.bool)
        for c in range(num_classes):
            idx = (labels == c).nonzero().flatten()
            k = int(round(p * idx.numel()))
            chosen[idx[torch.randperm(idx.numel(), generator=gen)[:k]]] = True
    else:
        chosen = torch.rand(n, generator=gen) < p
    m = int(chosen.sum())
    if model == "uniform":
        noisy[chosen] = torch.randint(0, num_classes, (m,), generator=gen)
    else:
        # an offset in 1..C-1 moves every chosen label to a uniformly random other class
        offset = torch.randint(1, num_classes, (m,), generator=gen)
        noisy[chosen] = (labels[chosen] + offset) % num_classes
    return noisy

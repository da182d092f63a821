"""Anchor choice: which samples of a split the planes pass through.

:func:`choose_anchors` draws three anchors per plane by one of the :data:`POLICIES`: any three
samples, three classes, one class, or a mislabelled sample with two of other classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from overparam_lit.utils import check

POLICIES = ("random", "distinct_classes", "same_class", "mislabelled")


def choose_anchors(
    y: Tensor, y_true: Tensor, num_planes: int, policy: str = "distinct_classes", seed: int = 0
) -> Tensor:
    """Draw ``(num_planes, 3)`` anchor indices into a split with labels ``y`` (trained on) and
    ``y_true`` (clean).

    Policies:
        ``random``: three different samples.
        ``distinct_classes``: three samples of three different clean classes.
        ``same_class``: three samples of one clean class (class drawn per plane).
        ``mislabelled``: the first anchor is a mislabelled sample (``y != y_true``), the other
        two are random samples of other clean classes than the first's noisy and clean labels
        (so the plane shows the region the net carved out for the memorised label).
    """
    check(policy in POLICIES, "unknown anchor policy", policy, f"Use one of {', '.join(POLICIES)}.")
    check(num_planes >= 1, "num_planes must be >= 1", num_planes, "Set num_planes to e.g. 16.")
    y, y_true = y.reshape(-1).long().cpu(), y_true.reshape(-1).long().cpu()
    n = y.numel()
    check(n >= 3, "at least three samples are needed to draw planes", n, "Use a larger split.")
    gen = torch.Generator().manual_seed(int(seed))
    classes = torch.unique(y_true)
    by_class = {int(c): torch.nonzero(y_true == c).reshape(-1) for c in classes}

    def pick(pool: Tensor, k: int) -> Tensor:
        return pool[torch.randperm(pool.numel(), generator=gen)[:k]]

    rows = []
    for _ in range(num_planes):
        if policy == "random":
            rows.append(torch.randperm(n, generator=gen)[:3])
        elif policy == "distinct_classes":
            check(
                classes.numel() >= 3,
                "policy 'distinct_classes' needs three classes in the split",
                classes.numel(),
                "Use policy 'random' or 'same_class'.",
            )
            cs = classes[torch.randperm(classes.numel(), generator=gen)[:3]]
            rows.append(torch.cat([pick(by_class[int(c)], 1) for c in cs]))
        elif policy == "same_class":
            big = [c for c, ids in by_class.items() if ids.numel() >= 3]
            check(
                len(big) > 0,
                "policy 'same_class' needs a class with three samples",
                {c: int(ids.numel()) for c, ids in by_class.items()},
                "Use a larger split or another policy.",
            )
            c = big[int(torch.randint(len(big), (1,), generator=gen))]
            rows.append(pick(by_class[c], 3))
        else:  # mislabelled
            flipped = torch.nonzero(y != y_true).reshape(-1)
            check(
                flipped.numel() > 0,
                "policy 'mislabelled' needs mislabelled samples (y != y_true), but the split "
                "has none",
                0,
                "Train with label noise (some labels flipped, e.g. 15%) or use another policy.",
            )
            first = pick(flipped, 1)
            others = torch.nonzero((y_true != y_true[first]) & (y_true != y[first])).reshape(-1)
            pool = others if others.numel() >= 2 else torch.nonzero(
                torch.arange(n) != first
            ).reshape(-1)
            rows.append(torch.cat([first, pick(pool, 2)]))
    return torch.stack(rows).long()

"""Batched data augmentation on the training device (random crop with padding, horizontal flip)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def random_crop_flip(x: Tensor, gen: torch.Generator, padding: int = 4, flip: bool = True) -> Tensor:
    """Randomly crop each image of ``x`` ``(B, C, H, W)`` from a zero-padded copy and flip it
    horizontally with probability 1/2; random numbers come from the CPU generator ``gen``."""
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    if flip:
        flips = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        cols = torch.where(flips[:, None, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indexing on dims 0, 2, 3 moves the channel axis last: (B, H, W, C)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()

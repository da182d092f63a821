"""What spans a probe's Hessian: the parameter subset, its kept entries and its dimension.

A probe differentiates the chosen parameters only (names or name prefixes), and of those only
the entries a model really has: the unpruned weights of a pruning run and, for a stack of padded
members, each member's own entries (its structural masks). Pure torch, no Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from overparam_lit.pruning.binding import structural_masks
from overparam_lit.utils import check


def subset_names(net: nn.Module, subset: Sequence[str] | None = None) -> list[str]:
    """The trainable parameters of ``net`` that span the Hessian: all of them, or those named by
    (or under a prefix in) ``subset``; an empty selection is a ``ConfigError``."""
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if subset is None:
        return names
    chosen = [n for n in names if any(n == s or n.startswith(s + ".") for s in subset)]
    check(bool(chosen), "no parameter matches the Hessian subset", list(subset),
          f"Use names or prefixes of the network's parameters, e.g. {names[:3]}.")
    return chosen


def kept_masks(net: nn.Module, pruning: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Kept entries by ``net``'s parameter names: a stack's structural masks, and-ed with the
    ``pruning`` masks (nonzero keeps; names of ``net`` or of a module holding it as ``net.``)."""
    out = dict(structural_masks(net))
    names = dict(net.named_parameters())
    for name, m in dict(pruning or {}).items():
        key = name[len("net."):] if name not in names and name.startswith("net.") else name
        if key in names:
            mine = m.to(names[key].device) != 0
            out[key] = mine if key not in out else out[key].to(mine.device) & mine
    return out


def subset_dims(net: nn.Module, names: Sequence[str], masks: Mapping[str, Tensor],
                members: int | None = None) -> list[int]:
    """The dimension of the Hessian subset: one entry for a single model, else one per member
    (parameters with a leading member axis), counting only the kept entries of ``masks``."""
    dims = []
    for i in range(members or 1):
        dims.append(sum(int(masks[n][i].sum() if members else masks[n].sum()) if n in masks
                        else (p[0].numel() if members else p.numel())
                        for n, p in net.named_parameters() if n in names))
    return dims

"""Function-preserving addition of hidden units (MLP) or channels (CNN) to one hidden layer.

Two methods add units to a hidden layer without changing the network's outputs:

* ``zero``: each new unit gets freshly initialised incoming weights (PyTorch's default
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) and zero outgoing weights.
* ``duplicate``: unit ``j`` is split in two (Fukumizu & Amari 2000; Simsek et al. 2021): the new
  unit copies ``j``'s incoming weights, bias and BatchNorm parameters and statistics; ``j``'s
  outgoing weights are shared, ``ratio`` staying with ``j`` and ``1 - ratio`` going to the copy.
  At a critical point of the narrow net every ``ratio`` gives a critical point of the wide one
  (a line of critical points), and the curvature along the direction that separates the two
  copies is ``ratio * (1 - ratio)`` times the unit's splitting matrix, so it can turn a minimum
  into a saddle: an escape direction.

:func:`add_units` adds units to one layer; :func:`choose_units` says which units a ``duplicate``
splits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from overparam_lit.escape.hidden import HiddenLayer, as_sequential, hidden_layers
from overparam_lit.utils import check

METHODS = ("zero", "duplicate")
UNIT_RULES = ("random", "largest")


def add_units(
    net: nn.Module,
    layer: int,
    count: int,
    method: str = "duplicate",
    ratio: float = 0.5,
    sources: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A copy of ``net`` with ``count`` units (channels) added to hidden layer ``layer``.

    Args:
        net: an ``nn.Sequential`` MLP or CNN (left untouched).
        layer: index into :func:`hidden_layers` (0 is the first hidden layer).
        count: number of units to add (>= 0).
        method: ``zero`` or ``duplicate``.
        ratio: for ``duplicate``, the share of the outgoing weight kept by the original unit
            (the copy gets ``1 - ratio``); any real number preserves the function.
        sources: for ``duplicate``, the unit each new unit copies (default: distinct units drawn
            from ``generator``). Splitting the same unit twice splits its current share again.
        generator: CPU generator for sources and the ``zero`` method's incoming weights.
    """
    check(method in METHODS, "unknown widening method", method, f"Use one of {METHODS}.")
    check(isinstance(count, int) and count >= 0, "count must be an integer >= 0", count,
          "Pass the number of units to add.")
    layers = hidden_layers(net)
    check(0 <= layer < len(layers), "hidden layer index out of range", layer,
          f"The network has {len(layers)} hidden layers; use 0..{len(layers) - 1}.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    out = copy.deepcopy(as_sequential(net))
    h = layers[layer]
    size = h.size
    if method == "duplicate":
        if sources is None:
            perm = torch.randperm(size, generator=gen).tolist()
            sources = [perm[i % size] for i in range(count)]
        check(len(sources) == count, "need one source unit per new unit", list(sources),
              f"Pass {count} source indices.")
        bad = [s for s in sources if not 0 <= int(s) < size]
        check(not bad, "source unit out of range", bad, f"Use indices in 0..{size - 1}.")
    with torch.no_grad():
        for i in range(count):
            src = int(sources[i]) if method == "duplicate" else None  # type: ignore[index]
            _add_one(out, h, size + i, src, ratio, gen)
    return out


def _cat_row(t: Tensor, row: Tensor) -> Tensor:
    return torch.cat([t, row.unsqueeze(0).to(t)], dim=0)


def _add_one(seq: nn.Sequential, h: HiddenLayer, size: int, src: int | None, ratio: float,
             gen: torch.Generator) -> None:
    prod, cons = seq[h.producer], seq[h.consumer]
    w = prod.weight
    if src is None:
        fan_in = w[0].numel()
        bound = 1.0 / fan_in**0.5
        new_w = (torch.rand(w.shape[1:], generator=gen, dtype=torch.float64) * 2 - 1) * bound
        new_b = (torch.rand((), generator=gen, dtype=torch.float64) * 2 - 1) * bound
    else:
        new_w, new_b = w[src].clone(), prod.bias[src].clone() if prod.bias is not None else None
    prod.weight = nn.Parameter(_cat_row(w.detach(), new_w), requires_grad=w.requires_grad)
    if prod.bias is not None:
        prod.bias = nn.Parameter(_cat_row(prod.bias.detach(), new_b), requires_grad=prod.bias.requires_grad)
    if isinstance(prod, nn.Linear):
        prod.out_features = size + 1
    else:
        prod.out_channels = size + 1
    if h.norm is not None:
        bn = seq[h.norm]
        j = src
        for name, fill in (("weight", 1.0), ("bias", 0.0)):
            p = getattr(bn, name)
            if p is not None:
                v = p[j].clone() if j is not None else torch.tensor(fill)
                setattr(bn, name, nn.Parameter(_cat_row(p.detach(), v), requires_grad=p.requires_grad))
        for name, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            b = getattr(bn, name)
            if b is not None:
                v = b[j].clone() if j is not None else torch.tensor(fill)
                setattr(bn, name, _cat_row(b, v))
        bn.num_features = size + 1
    # consumer: in-features are channels x (flattened spatial positions) after a Flatten
    cw = cons.weight.detach()
    n_out = cw.shape[0]
    per = cw[0].numel() // size
    check(cw[0].numel() == per * size, "consumer input size is not a multiple of the hidden size",
          (cw[0].numel(), size), "Widen only layers that feed a Linear/Conv directly or via Flatten.")
    if isinstance(cons, nn.Linear):
        blocks = cw.reshape(n_out, size, per)
    else:
        blocks = cw.reshape(n_out, size, *cw.shape[2:])
    if src is None:
        new_block = torch.zeros_like(blocks[:, :1])
    else:
        new_block = (1.0 - ratio) * blocks[:, src : src + 1]
        blocks = blocks.clone()
        blocks[:, src] = ratio * blocks[:, src]
    blocks = torch.cat([blocks, new_block], dim=1)
    if isinstance(cons, nn.Linear):
        cons.weight = nn.Parameter(blocks.reshape(n_out, -1).contiguous(),
                                   requires_grad=cons.weight.requires_grad)
        cons.in_features = cons.weight.shape[1]
    else:
        cons.weight = nn.Parameter(blocks.contiguous(), requires_grad=cons.weight.requires_grad)
        cons.in_channels = size + 1


def _outgoing_norms(seq: nn.Sequential, h: HiddenLayer) -> Tensor:
    """L2 norm of each hidden unit's outgoing weights (its block of the consumer's weights)."""
    cw = seq[h.consumer].weight.detach()
    blocks = cw.reshape(cw.shape[0], h.size, -1)  # Linear after Flatten: size x positions; Conv: kernel
    return blocks.double().pow(2).sum(dim=(0, 2)).sqrt()


def choose_units(net: nn.Module, layer: int, count: int, rule: str | int | Sequence[int] = "random",
                 generator: torch.Generator | None = None) -> list[int]:
    """The unit each of ``count`` new units of hidden layer ``layer`` copies (``duplicate``).

    Rules:
        ``random``: distinct units in an order drawn from ``generator`` (once every unit is split,
            the order starts again, so a unit is split a second time);
        ``largest``: the units with the largest outgoing weights (L2 norm of the unit's block of
            the next layer's weights; ties go to the lower index), cycling likewise;
        an integer ``j``: every new unit splits unit ``j`` (its share is split again each time);
        a list: one unit per new unit (its length must be ``count``).
    """
    seq = as_sequential(net)
    layers = hidden_layers(seq)
    check(0 <= layer < len(layers), "hidden layer index out of range", layer,
          f"The network has {len(layers)} hidden layers; use 0..{len(layers) - 1}.")
    h = layers[layer]
    if isinstance(rule, str):
        check(rule in UNIT_RULES, "unknown unit rule", rule,
              f"Use one of {UNIT_RULES}, a unit index or a list of unit indices.")
        if rule == "random":
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            order = torch.randperm(h.size, generator=gen).tolist()
        else:
            norms = _outgoing_norms(seq, h)
            order = sorted(range(h.size), key=lambda j: (-float(norms[j]), j))
        return [int(order[i % h.size]) for i in range(count)]
    chosen = [int(rule)] * count if isinstance(rule, int) else [int(j) for j in rule]
    check(len(chosen) == count, f"hidden layer {layer} gains {count} units, but {len(chosen)} source units "
          "were given", list(chosen), f"Give {count} unit indices, or one index, or a rule {UNIT_RULES}.")
    bad = [j for j in chosen if not 0 <= j < h.size]
    check(not bad, f"unit index out of range for hidden layer {layer} of size {h.size}", bad,
          f"Use indices in 0..{h.size - 1}.")
    return chosen

"""Function-preserving widening of MLPs (hidden units) and CNNs (channels).

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

Networks are ``nn.Sequential`` stacks of ``Linear`` / ``Conv`` layers, optional ``BatchNorm``
after a producer, elementwise activations, pools and ``Flatten`` (the MLP and CNN families).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from overparam_lit.utils import ConfigError, check

_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
METHODS = ("zero", "duplicate")


@dataclass
class HiddenLayer:
    """Indices (in the Sequential) of a hidden layer's producer, optional norm and consumer."""

    producer: int
    norm: int | None
    consumer: int
    size: int


def _sequential(net: nn.Module) -> nn.Sequential:
    if not isinstance(net, nn.Sequential):
        raise ConfigError(
            f"widening works on nn.Sequential networks (the MLP and CNN families); got "
            f"{type(net).__name__}. Pass the family's .net or an nn.Sequential of Linear/Conv layers."
        )
    return net


def hidden_layers(net: nn.Module) -> list[HiddenLayer]:
    """The hidden layers of a Sequential network, in order (every producer but the last)."""
    seq = _sequential(net)
    layers: list[HiddenLayer] = []
    prod: int | None = None
    norm: int | None = None
    for i, m in enumerate(seq):
        if isinstance(m, _PRODUCERS):
            if prod is not None:
                size = seq[prod].out_features if isinstance(seq[prod], nn.Linear) else seq[prod].out_channels
                layers.append(HiddenLayer(prod, norm, i, int(size)))
            prod, norm = i, None
        elif isinstance(m, _NORMS):
            if prod is None or norm is not None:
                raise ConfigError(f"cannot widen: BatchNorm at position {i} does not follow a "
                                  "Linear/Conv layer directly. Use the MLP or CNN families.")
            norm = i
        elif any(True for _ in m.parameters()):
            raise ConfigError(f"cannot widen: layer {i} ({type(m).__name__}) has parameters but is "
                              "not Linear, Conv or BatchNorm. Use the MLP or CNN families.")
    return layers


def _out_size(m: nn.Module) -> int:
    return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)


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
    out = copy.deepcopy(_sequential(net))
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


def widen_net(net: nn.Module, sizes: Sequence[int], method: str = "duplicate", ratio: float = 0.5,
              generator: torch.Generator | None = None) -> nn.Sequential:
    """A copy of ``net`` whose hidden layers have ``sizes`` units (one size per hidden layer,
    each at least the current size)."""
    layers = hidden_layers(net)
    check(len(sizes) == len(layers), "need one new size per hidden layer", list(sizes),
          f"The network has {len(layers)} hidden layers of sizes {[h.size for h in layers]}.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    out = _sequential(net)
    for i, (h, new) in enumerate(zip(layers, sizes, strict=True)):
        check(int(new) >= h.size, "widening cannot remove units", (h.size, new),
              f"Choose a size >= {h.size} for hidden layer {i}.")
        out = add_units(out, i, int(new) - h.size, method, ratio, generator=gen)
    return out if out is not net else copy.deepcopy(out)


def widen(model: nn.Module, new_width: int, method: str = "duplicate", ratio: float = 0.5,
          generator: torch.Generator | None = None) -> nn.Module:
    """Widen a width-family model (MLP, CNN) or a bare Sequential to ``new_width``.

    Every hidden layer is scaled by ``new_width / width`` (MLP: ``width`` units per layer; CNN:
    k, 2k, 4k, 8k channels become the same multiples of ``new_width``). A model with a ``.net``
    (an :class:`~overparam_lit.models.OverparamModule`) is changed in place: its ``net``,
    ``width``, ``num_params`` and ``hparams['width']`` are updated, and it is returned; build a
    fresh optimizer afterwards (``configure_optimizers()``). A bare Sequential is copied.
    """
    has_net = isinstance(getattr(model, "net", None), nn.Module)
    net = model.net if has_net else model
    layers = hidden_layers(net)
    check(len(layers) >= 1, "the network has no hidden layer to widen", type(net).__name__,
          "Use a network with at least one hidden Linear/Conv layer.")
    old = int(getattr(model, "width", layers[0].size))
    check(isinstance(new_width, int) and new_width >= old,
          "new width must be an integer >= the current width", new_width,
          f"The model has width {old}; pass a larger integer.")
    sizes = []
    for h in layers:
        check(h.size * new_width % old == 0, "a hidden layer does not scale to the new width",
              (h.size, old, new_width), "Choose a new width for which every layer size stays an integer.")
        sizes.append(h.size * new_width // old)
    wide = widen_net(net, sizes, method, ratio, generator)
    if not has_net:
        return wide
    model.net = wide
    model.width = new_width
    if hasattr(model, "num_params"):
        model.num_params = sum(p.numel() for p in wide.parameters())
    hparams = getattr(model, "hparams", None)
    if hparams is not None and "width" in hparams:
        hparams["width"] = new_width
    return model

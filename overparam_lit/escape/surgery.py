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

Building blocks of the :class:`~overparam_lit.callbacks.widen.Widen` callback:
:func:`growth` (how many units each layer gains), :func:`choose_units` (which units a
``duplicate`` splits), :func:`widen_layers` (the widened copy and what was split),
:func:`split_direction` / :func:`random_direction` / :func:`nudge_` (a small step off an exact
critical point) and :func:`resize_to` (rebuild a widened network's shapes from a state dict, to
load a checkpoint).
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
            f"widening works on nn.Sequential networks of Linear/Conv layers (the MLP, LeNet and CNN "
            f"families); got {type(net).__name__}. Use one of those families (or pass a model's .net)."
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


# ---- widening plans, unit choice, nudges, rebuilding from shapes --------------------------------
UNIT_RULES = ("random", "largest")


def hidden_sizes(net: nn.Module) -> list[int]:
    """The sizes (units or channels) of the hidden layers of a Sequential network, in order."""
    return [h.size for h in hidden_layers(net)]


def growth(net: nn.Module, units: int, layer: int | None = None, width: int | None = None) -> list[int]:
    """How many units each hidden layer gains when the network is widened by ``units``.

    With ``layer`` only that hidden layer gains ``units``. Otherwise every hidden layer grows in
    proportion to its size: a layer of ``size`` gains ``units * size / width``, where ``width`` is
    the family's width (default: the first hidden layer's size). An MLP of width ``k`` gains
    ``units`` per layer and becomes the MLP of width ``k + units``; the CNN's ``k, 2k, 4k, 8k``
    channels gain ``units, 2 units, 4 units, 8 units`` and it becomes the CNN of width ``k + units``.
    A layer whose gain is not a whole number is refused (widen one ``layer`` instead).
    """
    sizes = hidden_sizes(net)
    check(len(sizes) >= 1, "the network has no hidden layer to widen", type(net).__name__,
          "Use a network with at least one hidden Linear/Conv layer.")
    check(isinstance(units, int) and not isinstance(units, bool) and units >= 1,
          "the number of units to add must be an integer >= 1", units, "Set units to e.g. 1.")
    if layer is not None:
        check(isinstance(layer, int) and 0 <= layer < len(sizes), "hidden layer index out of range", layer,
              f"The network has {len(sizes)} hidden layers of sizes {sizes}; use 0..{len(sizes) - 1}.")
        return [units if i == layer else 0 for i in range(len(sizes))]
    ref = int(width) if width is not None else sizes[0]
    out = []
    for i, size in enumerate(sizes):
        check(size * units % ref == 0, f"hidden layer {i} (size {size}) cannot grow in proportion to the "
              f"width {ref} by {units} units", (size, ref, units),
              "Choose units so that every layer's gain size * units / width is whole, or widen one layer "
              "(set layer).")
        out.append(size * units // ref)
    return out


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
    seq = _sequential(net)
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


@dataclass
class Widened:
    """A widened copy of a network and what was done.

    Attributes:
        net: the wide network.
        sources: per hidden layer, the unit each new unit copies (``duplicate``; empty lists for
            ``zero`` and for layers that did not grow).
        shares: per hidden layer, each unit's share of its original outgoing weights after the
            splits (1 for units never split, 0 for ``zero`` units); used by :func:`split_direction`.
        sizes_before: hidden sizes before widening.
    """

    net: nn.Sequential
    sources: list[list[int]]
    shares: list[list[float]]
    sizes_before: list[int]


def widen_layers(net: nn.Module, added: Sequence[int], method: str = "duplicate", ratio: float = 0.5,
                 unit: str | int | Sequence[int] = "random",
                 generator: torch.Generator | None = None) -> Widened:
    """A copy of ``net`` whose hidden layer ``i`` gained ``added[i]`` units (see :func:`growth`).

    ``duplicate`` chooses the units to split by ``unit`` (:func:`choose_units`) from the weights
    before that layer grew; ``zero`` draws the new units' incoming weights from ``generator``.
    Layers are widened in order with one generator, so the result is a function of the network,
    the arguments and the generator's seed only.
    """
    check(method in METHODS, "unknown widening method", method, f"Use one of {METHODS}.")
    check(isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and float(ratio) == float(ratio),
          "ratio must be a real number", ratio, "Use e.g. 0.5 (any real number preserves the function).")
    seq = _sequential(net)
    sizes = hidden_sizes(seq)
    check(len(added) == len(sizes), "need one count of new units per hidden layer", list(added),
          f"The network has {len(sizes)} hidden layers of sizes {sizes}.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    out = copy.deepcopy(seq)
    sources: list[list[int]] = []
    shares: list[list[float]] = []
    for i, count in enumerate(added):
        check(isinstance(count, int) and count >= 0, "the number of new units must be an integer >= 0",
              count, "Widening cannot remove units.")
        share = [1.0] * sizes[i]
        src: list[int] = []
        if count and method == "duplicate":
            src = choose_units(out, i, count, unit, gen)
            for j in src:
                share.append((1.0 - ratio) * share[j])
                share[j] *= ratio
        elif count:
            share += [0.0] * count
        if count:
            out = add_units(out, i, count, method, ratio, sources=src if method == "duplicate" else None,
                            generator=gen)
        sources.append(src)
        shares.append(share)
    return Widened(out, sources, shares, sizes)


def split_direction(widened: Widened, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A direction that separates each duplicated unit from its copy, ``{parameter name: tensor}``.

    For a split pair (unit ``j``, copy ``c``) with final outgoing shares ``s_j`` and ``s_c``, the
    incoming weights and bias move by ``s_c * u`` (unit ``j``) and ``-s_j * u`` (copy ``c``), with
    ``u ~ N(0, I)`` drawn per pair: the network's outputs do not change to first order, and the
    loss changes at second order by the splitting curvature (Fukumizu & Amari 2000), which is
    negative along some ``u`` at a critical point that widening turned into a saddle. Every other
    entry is zero.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    seq = widened.net
    out = {n: torch.zeros_like(p) for n, p in seq.named_parameters()}
    for h, src, share, size in zip(hidden_layers(seq), widened.sources, widened.shares, widened.sizes_before,
                                   strict=True):
        prod = seq[h.producer]
        w_name, b_name = f"{h.producer}.weight", f"{h.producer}.bias"
        for k, j in enumerate(src):
            c = size + k
            u = torch.randn(prod.weight.shape[1:], generator=gen, dtype=torch.float64).to(prod.weight)
            s_c = share[c]
            out[w_name][j] += s_c * u
            out[w_name][c] -= share[j] * u
            if prod.bias is not None:
                ub = torch.randn((), generator=gen, dtype=torch.float64).to(prod.bias)
                out[b_name][j] += s_c * ub
                out[b_name][c] -= share[j] * ub
    return out


def random_direction(net: nn.Module, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A Gaussian direction ``N(0, I)`` over every trainable parameter, ``{name: tensor}``."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
            for n, p in net.named_parameters() if p.requires_grad}


@torch.no_grad()
def nudge_(net: nn.Module, direction: dict[str, Tensor], size: float) -> float:
    """Move ``net``'s parameters (in place) by ``size`` along ``direction`` (normalised to unit L2
    norm over all its entries); returns the direction's norm before normalising (0: no move)."""
    params = dict(net.named_parameters())
    unknown = sorted(set(direction) - set(params))
    check(not unknown, "the nudge direction names parameters the network does not have", unknown[:4],
          f"Key the direction by the network's parameter names, e.g. {list(params)[:3]}.")
    for n, d in direction.items():
        check(tuple(d.shape) == tuple(params[n].shape), f"the nudge direction of {n!r} has the wrong shape",
              (tuple(d.shape), tuple(params[n].shape)), "Give a tensor of the (widened) parameter's shape.")
    norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values())))
    if norm == 0.0 or size == 0.0:
        return norm
    for n, d in direction.items():
        params[n].add_(d.to(params[n]) * (float(size) / norm))
    return norm


def resize_to(net: nn.Module, shapes: dict[str, Sequence[int]]) -> nn.Sequential:
    """A copy of ``net`` with the hidden sizes that ``shapes`` (``{name: shape}``, e.g. from a
    state dict of a widened copy of it) describe; the new units' values are placeholders
    (``zero`` method) to be overwritten by loading that state dict.

    Raises :class:`ConfigError` when the shapes are not those of a widening of ``net`` (a narrower
    layer, or a tensor whose shape still differs after resizing).
    """
    seq = _sequential(net)
    layers = hidden_layers(seq)
    added = []
    for i, h in enumerate(layers):
        key = f"{h.producer}.weight"
        check(key in shapes, f"the shapes lack hidden layer {i}'s weight {key!r}", sorted(shapes)[:6],
              "Pass the state dict (names without the module prefix) of a widened copy of this network.")
        new = int(shapes[key][0])
        check(new >= h.size, f"hidden layer {i} is narrower in the saved network than in this one",
              (h.size, new), "Load a checkpoint of this network or of a widened copy of it.")
        added.append(new - h.size)
    out = widen_layers(seq, added, "zero").net if any(added) else copy.deepcopy(seq)
    mine = {**{n: tuple(p.shape) for n, p in out.named_parameters()},
            **{n: tuple(b.shape) for n, b in out.named_buffers()}}
    diff = {n: (mine[n], tuple(s)) for n, s in shapes.items() if n in mine and mine[n] != tuple(s)}
    check(not diff, "the saved network is not a widening of this one", dict(list(diff.items())[:3]),
          "Load a checkpoint written by a fit of this model (with the same Widen callback).")
    return out

"""Function-preserving widening of MLPs (hidden units) and CNNs (channels).

A widened network computes the same function as the narrow one: each new unit either copies a
unit and shares its outgoing weights (``duplicate``, which turns a critical point into a line of
critical points and can make a minimum a saddle) or starts with zero outgoing weights (``zero``);
:mod:`~overparam_lit.escape.units` adds the units and says why. Networks are ``nn.Sequential``
stacks of ``Linear`` / ``Conv`` layers, optional ``BatchNorm`` after a producer, elementwise
activations, pools and ``Flatten`` (the MLP and CNN families; :mod:`~overparam_lit.escape.hidden`).

Building blocks of the :class:`~overparam_lit.callbacks.widen.Widen` callback, all importable from
here: :func:`growth` (how many units each layer gains), :func:`choose_units` (which units a
``duplicate`` splits), :func:`widen_layers` (the widened copy and what was split),
:func:`split_direction` / :func:`random_direction` / :func:`nudge_` (a small step off an exact
critical point, :mod:`~overparam_lit.escape.directions`) and :func:`resize_to` (rebuild a widened
network's shapes from a state dict, to load a checkpoint). :func:`widen_net` and :func:`widen`
widen a whole network or width-family model to new sizes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from overparam_lit.escape.directions import nudge_, random_direction, split_direction
from overparam_lit.escape.hidden import HiddenLayer, as_sequential, hidden_layers, hidden_sizes
from overparam_lit.escape.units import METHODS, UNIT_RULES, add_units, choose_units
from overparam_lit.utils import check

__all__ = [
    "METHODS", "UNIT_RULES", "HiddenLayer", "Widened", "add_units", "choose_units", "growth", "hidden_layers",
    "hidden_sizes", "nudge_", "random_direction", "resize_to", "split_direction", "widen", "widen_layers",
    "widen_net",
]


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
    seq = as_sequential(net)
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


def widen_net(net: nn.Module, sizes: Sequence[int], method: str = "duplicate", ratio: float = 0.5,
              generator: torch.Generator | None = None) -> nn.Sequential:
    """A copy of ``net`` whose hidden layers have ``sizes`` units (one size per hidden layer,
    each at least the current size)."""
    layers = hidden_layers(net)
    check(len(sizes) == len(layers), "need one new size per hidden layer", list(sizes),
          f"The network has {len(layers)} hidden layers of sizes {[h.size for h in layers]}.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    out = as_sequential(net)
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


def resize_to(net: nn.Module, shapes: dict[str, Sequence[int]]) -> nn.Sequential:
    """A copy of ``net`` with the hidden sizes that ``shapes`` (``{name: shape}``, e.g. from a
    state dict of a widened copy of it) describe; the new units' values are placeholders
    (``zero`` method) to be overwritten by loading that state dict.

    Raises :class:`ConfigError` when the shapes are not those of a widening of ``net`` (a narrower
    layer, or a tensor whose shape still differs after resizing).
    """
    seq = as_sequential(net)
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

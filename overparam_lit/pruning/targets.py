"""What iterative magnitude pruning prunes in a model (no Lightning).

:func:`imp_targets` finds a model's prunable Linear/Conv weights, its output layer and a stack's
structural masks; :func:`example_input` is the zero batch that traces a network's channel groups
and its structured export.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from overparam_lit.protocols import network_of
from overparam_lit.pruning.binding import Masks, structural_masks
from overparam_lit.pruning.select import PrunableWeight, output_layer_name, prunable_weights
from overparam_lit.utils import check


@dataclass
class ImpTargets:
    """What IMP prunes in a model.

    Attributes:
        weights: the prunable tensors (names as in ``module.named_parameters()``).
        output_layer: module name of the output layer (``None``: the model has none).
        prefix: ``"net."`` when the model keeps its network in ``.net``, else ``""``.
        base: a stack's structural masks (empty for a single model or equal widths).
        num_members: ``M`` for a stack, ``None`` for a single model.
    """

    weights: list[PrunableWeight]
    output_layer: str | None
    prefix: str
    base: Masks
    num_members: int | None


def imp_targets(module: nn.Module, output_layer: str | None = None, include_output: bool = True,
                include_bias: bool = False) -> ImpTargets:
    """The prunable weights, output layer and structural masks of ``module`` (a model that keeps
    its network in ``.net``, such as an ``OverparamModule``, or a plain network).

    Raises :class:`ConfigError` when ``output_layer`` is not a module of the model, or when the
    model has no prunable weight.
    """
    members = getattr(module, "members", None)
    net = network_of(module)
    prefix = "net." if net is not module else ""
    out_name = output_layer
    if out_name is None:
        found = output_layer_name(net)
        out_name = None if found is None else prefix + found
    check(out_name is None or out_name in dict(module.named_modules()),
          "output_layer is not a module of the model", out_name,
          "Give its name in model.named_modules(), e.g. 'net.5'.")
    weights = prunable_weights(module, include_output, out_name, include_bias)
    check(len(weights) > 0, "the model has no prunable weights (Linear/Conv weights)",
          type(module).__name__, "IMP prunes Linear and Conv layers; use a model that has some.")
    return ImpTargets(weights, out_name, prefix, structural_masks(module),
                      None if members is None else len(members))


def example_input(module: nn.Module) -> Tensor:
    """A zero batch of one input of ``module.input_shape`` on the module's device."""
    return torch.zeros(1, *module.input_shape, device=next(module.parameters()).device)

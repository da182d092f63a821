"""Which parameters IMP prunes: the weights of Linear and Conv layers (and, on request, their
biases); never normalisation layers or anything else."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
)


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable weight tensor.

    Attributes:
        name: parameter name in ``model.named_parameters()`` (also its ``state_dict`` key).
        module_name: name of the owning layer in ``model.named_modules()``.
        shape: the weight's shape.
        is_output: whether the layer is the output layer (pruned at its own rate).
    """

    name: str
    module_name: str
    shape: tuple[int, ...]
    is_output: bool


def output_layer_name(model: nn.Module) -> str | None:
    """Name of the output layer: the last Linear or Conv layer in registration order."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            last = name
    return last


def prunable_weights(
    model: nn.Module, include_output: bool = True, output_layer: str | None = None,
    include_bias: bool = False,
) -> list[PrunableWeight]:
    """The weights of every Linear/Conv layer of ``model`` in registration order.

    Normalisation layers, embeddings and any other parameters are never selected; biases of
    Linear/Conv layers only with ``include_bias``.

    Args:
        model: the module (for a LightningModule its names match its ``state_dict`` keys).
        include_output: whether the output layer's tensors are in the list.
        output_layer: module name of the output layer; the last Linear/Conv layer if ``None``.
        include_bias: also select the layers' biases (pruned with the weights, by magnitude).
    """
    out_name = output_layer if output_layer is not None else output_layer_name(model)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        is_out = name == out_name
        if is_out and not include_output:
            continue
        prefix = f"{name}." if name else ""
        found.append(PrunableWeight(prefix + "weight", name, tuple(weight.shape), is_out))
        bias = getattr(module, "bias", None)
        if include_bias and isinstance(bias, nn.Parameter):
            found.append(PrunableWeight(prefix + "bias", name, tuple(bias.shape), is_out))
    return found

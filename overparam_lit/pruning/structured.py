"""Structured pruning: whole neurons and channels, coupled through torch-pruning's dependency graph.

A *channel group* is every parameter slice that must go together when one output channel (or
neuron) of a layer is removed: the layer's weight rows and bias, the BatchNorm entries after
it, the next layers' input columns, and for residual connections every layer that writes into
the same sum. During training such a group is pruned by masks (zeros), so the model keeps its
shapes and ``state_dict`` keys; :func:`export_pruned` then builds a physically smaller copy
through torch-pruning that computes the same outputs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from overparam_lit.pruning.masks import kept_count
from overparam_lit.pruning.select import PRUNABLE_TYPES

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)


@dataclass
class ChannelGroup:
    """Coupled parameter slices that follow the channels of one root layer.

    Attributes:
        root: module name of the root layer (its output channels are the group's channels).
        size: number of channels.
        slices: ``(param_name, dim, root_idx, local_idx)``: entry ``local_idx[j]`` along ``dim``
            of the parameter belongs to channel ``root_idx[j]``.
    """

    root: str
    size: int
    slices: list[tuple[str, int, Tensor, Tensor]] = field(default_factory=list)


def _param_slices(module: nn.Module, mname: str, out_fn: bool) -> list[tuple[str, int]]:
    """(parameter name, dim) pairs that one channel of ``module`` occupies."""
    pre = f"{mname}." if mname else ""
    if isinstance(module, PRUNABLE_TYPES):
        if out_fn:
            res = [(pre + "weight", 0)]
            if module.bias is not None:
                res.append((pre + "bias", 0))
            return res
        if getattr(module, "groups", 1) != 1:
            raise ValueError(f"grouped convolution {mname!r} is not supported by structured pruning")
        return [(pre + "weight", 1)]
    if isinstance(module, _NORMS):
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            raise ValueError(f"LayerNorm {mname!r} over several dims is not supported")
        names = [n for n, p in module.named_parameters(recurse=False) if p is not None]
        return [(pre + n, 0) for n in names]
    if any(True for _ in module.parameters(recurse=False)):
        raise ValueError(
            f"structured pruning does not know how to slice layer {mname!r} "
            f"({type(module).__name__}); use granularity 'unstructured'"
        )
    return []


def channel_groups(
    model: nn.Module,
    example_inputs: Tensor,
    output_layer: str,
    prefix: str = "",
) -> list[ChannelGroup]:
    """Coupled channel groups of ``model`` (roots: every Linear/Conv but the output layer).

    Args:
        model: the network (for a LightningModule pass its ``net`` and ``prefix="net."``).
        example_inputs: one batch of inputs to trace the graph.
        output_layer: module name (inside ``model``) of the output layer, never pruned.
        prefix: prepended to parameter names so they match the caller's ``state_dict`` keys.
    """
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    was_training = model.training
    model.eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    model.train(was_training)
    groups = []
    for group in dg.get_all_groups(ignored_layers=[modules[output_layer]], root_module_types=PRUNABLE_TYPES):
        root_dep = group.items[0].dep
        root = names[root_dep.target.module]
        size = len(group.items[0].idxs)
        cg = ChannelGroup(root=prefix + root, size=size)
        for item in group.items:
            module = item.dep.target.module
            if module not in names:
                continue
            out_fn = dg.is_out_channel_pruning_fn(item.dep.handler)
            root_idx = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
            local_idx = torch.as_tensor(list(item.idxs), dtype=torch.long)
            for pname, dim in _param_slices(module, names[module], out_fn):
                cg.slices.append((prefix + pname, dim, root_idx, local_idx))
        groups.append(cg)
    return groups


def _sel(t: Tensor, dim: int, idx: Tensor) -> Tensor:
    return t.index_select(dim, idx.to(t.device))


def group_masks(groups: list[ChannelGroup], params: Mapping[str, Tensor],
                keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Parameter masks from kept channels: ``keep[root]`` is a bool vector of the group's size."""
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for g in groups for n, *_ in g.slices}
    for g in groups:
        dead = ~keep[g.root]
        for name, dim, root_idx, local_idx in g.slices:
            drop = local_idx[dead.to(root_idx.device)[root_idx]]
            if drop.numel():
                masks[name].index_fill_(dim, drop.to(masks[name].device), False)
    return masks


def channel_scores(groups: list[ChannelGroup], params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Root-mean-square magnitude of every channel over all its coupled entries."""
    scores = {}
    for g in groups:
        sq = torch.zeros(g.size, dtype=torch.float64)
        count = torch.zeros(g.size, dtype=torch.float64)
        for name, dim, root_idx, local_idx in g.slices:
            p = params[name].detach().double().cpu()
            part = _sel(p, dim, local_idx).pow(2)
            per = part.movedim(dim, 0).reshape(part.shape[dim], -1)
            sq.index_add_(0, root_idx, per.sum(1))
            count.index_add_(0, root_idx, torch.full((len(root_idx),), float(per.shape[1]),
                                                     dtype=torch.float64))
        scores[g.root] = (sq / count.clamp_min(1)).sqrt()
    return scores


def prune_channels(
    groups: list[ChannelGroup],
    params: Mapping[str, Tensor],
    keep: Mapping[str, Tensor],
    density: float,
    scope: str = "layerwise",
) -> dict[str, Tensor]:
    """New kept-channel vectors keeping the highest-norm surviving channels.

    ``density`` is the fraction of each group's original channels kept (``layerwise``) or of all
    channels together (``global``, scores compared as RMS per entry). Every group keeps at
    least one channel so the network stays connected.
    """
    scores = channel_scores(groups, params)
    new = {}
    if scope == "layerwise":
        for g in groups:
            alive = keep[g.root].cpu()
            s = torch.where(alive, scores[g.root], torch.full_like(scores[g.root], -torch.inf))
            k = min(max(1, kept_count(g.size, density)), int(alive.sum()))
            order = torch.argsort(s, descending=True, stable=True)
            out = torch.zeros(g.size, dtype=torch.bool)
            out[order[:k]] = True
            new[g.root] = out
        return new
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}")
    all_s = torch.cat([torch.where(keep[g.root].cpu(), scores[g.root], torch.tensor(-torch.inf))
                       for g in groups])
    total = sum(g.size for g in groups)
    order = torch.argsort(all_s, descending=True, stable=True)
    flat = torch.zeros(total, dtype=torch.bool)
    flat[order[: min(kept_count(total, density), int(torch.isfinite(all_s).sum()))]] = True
    start = 0
    for g in groups:
        part = flat[start : start + g.size].clone()
        if not part.any():  # keep the best surviving channel
            s = torch.where(keep[g.root].cpu(), scores[g.root], torch.tensor(-torch.inf))
            part[int(s.argmax())] = True
        new[g.root] = part
        start += g.size
    return new


def export_pruned(
    model: nn.Module,
    example_inputs: Tensor,
    keep: Mapping[str, Tensor],
    prefix: str = "",
) -> nn.Module:
    """A physically smaller copy of ``model`` without the pruned channels (torch-pruning).

    ``keep`` maps root layer names (with ``prefix``, as in :class:`ChannelGroup`) to kept-channel
    vectors. With the masks of :func:`group_masks` applied to ``model`` the copy computes the
    same outputs.
    """
    small = copy.deepcopy(model)
    was_training = small.training
    small.eval()
    dg = tp.DependencyGraph().build_dependency(small, example_inputs=example_inputs)
    modules = dict(small.named_modules())
    for root, kept in keep.items():
        name = root[len(prefix):] if prefix and root.startswith(prefix) else root
        layer = modules[name]
        dead = torch.nonzero(~kept.cpu()).flatten().tolist()
        if not dead:
            continue
        pruner = dg.get_pruner_of_module(layer)
        group = dg.get_pruning_group(layer, pruner.prune_out_channels, idxs=dead)
        group.prune()
    small.train(was_training)
    return small


def channel_report(groups: list[ChannelGroup], keep: Mapping[str, Tensor]) -> dict[str, Any]:
    """Kept channels per group, JSON-ready."""
    return {g.root: {"channels": g.size, "kept": int(keep[g.root].sum())} for g in groups}

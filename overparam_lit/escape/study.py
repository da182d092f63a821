"""The mid-fit widening study (escape dimensions: function-preserving growth during a fit),
declared for :mod:`overparam_lit.registry`, with the checkpoint migration it needs: a checkpoint
written after the widening holds larger tensors than the hyperparameters build."""

from __future__ import annotations

from typing import Any

from overparam_lit.registry import Study, register
from overparam_lit.utils import check


def grow_to_checkpoint(module: Any, checkpoint: dict[str, Any]) -> bool:
    """Grow ``module``'s network (each member's) to the shapes of ``checkpoint``'s weights, before
    they load; True when it changed the network. A network of the checkpoint's shapes is left
    alone."""
    state = checkpoint.get("state_dict") or {}
    saved = {k[len("net."):]: tuple(v.shape) for k, v in state.items() if k.startswith("net.")}
    mine = {n: tuple(t.shape) for n, t in [*module.net.named_parameters(), *module.net.named_buffers()]}
    if all(saved.get(n, s) == s for n, s in mine.items()):
        return False
    from overparam_lit.escape.surgery import resize_to

    if module.members is not None:
        check(all(s[:1] == (module.num_members,) for s in saved.values()),
              "the checkpoint holds another number of members", {n: s[:1] for n, s in saved.items()},
              "Load it with the members it was trained with.")
        saved = {n: s[1:] for n, s in saved.items()}
    module.set_network([resize_to(net, saved) for net in module.member_networks()],
                       checkpoint.get("model_width"))
    return True


WIDEN = register(Study(
    "widen",
    callback="overparam_lit.callbacks.widen.Widen",
    options="overparam_lit.escape.widen_step.WidenOptions",
    artifacts={
        "widen": "widen/",
        "widen_json": "widen/widen.json",   # when and how the network was widened
    },
    changes_model=True,
    fragment="widen",
    load_checkpoint="overparam_lit.escape.study.grow_to_checkpoint",
    reader="overparam_lit.studies.runs.widen_record",
    figures=("widen",),
))

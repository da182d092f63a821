"""The contracts between the module and the studies, and between studies.

:class:`StudyModule` is what a LightningModule offers the study callbacks: its network, its
members, their losses and rows, and the pruning masks, which the module owns (a pruning study
sets them; a Hessian probe reads them). :class:`~overparam_lit.models.base.OverparamModule`
fulfils it; a module of one's own that does too gets every study.

:class:`ModelChanging` is what a callback that changes the network in the middle of a fit
(``Widen``) tells the observing studies: that it will change it at this step, so a probe due at
that step waits for the change and is then requested through its public method
(:meth:`~overparam_lit.callbacks.hessian.HessianProbe.probe_once`) instead of running on the old
network. No study edits another's state or reorders the trainer's callbacks.

Pure (no Lightning): the pure packages take the network through :func:`network_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["ModelChanging", "StudyModule", "network_of"]


@runtime_checkable
class StudyModule(Protocol):
    """What a module offers the studies.

    Attributes:
        net: the network the studies probe, prune and widen (a ``StackedNet`` for members).
        members: the stacked members (``None`` for a single model).
        task: ``classification`` or ``regression``.
        pruning_masks: ``{parameter name: 0/1 mask}`` of the pruning study that trains the module
            (``None`` when none does); the module owns them, the pruning callback sets them.
    """

    net: nn.Module
    members: Sequence[Any] | None
    task: str
    pruning_masks: dict[str, Tensor] | None

    @property
    def num_members(self) -> int:
        """The number of members (1 for a single model)."""

    def member_networks(self) -> list[nn.Module]:
        """Each member's network on its own."""

    def member_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each member's mean loss, shape ``(M,)``."""

    def member_rows(self) -> list[dict[str, int]]:
        """One row per member: ``member``, ``seed``, ``width``, ``num_params``."""


@runtime_checkable
class ModelChanging(Protocol):
    """A callback that changes the network at a step of the fit."""

    def changes_model_at(self, trainer: Any, step: int) -> bool:
        """True when this callback has yet to change the network after optimizer step ``step``
        (an observer due at that step waits, and is requested once the change is made)."""


def network_of(module: nn.Module) -> nn.Module:
    """The network a study works on: a :class:`StudyModule`'s ``net``; for another module, its
    ``net`` when it has one (a LightningModule wrapping its network), else the module itself (a
    plain ``nn.Module``)."""
    net = getattr(module, "net", None)
    return net if isinstance(net, nn.Module) else module

"""The mask type of masked training: boolean masks by parameter name, bound to a module's parameters.

IMP, ticket starts and a stack's padded members keep their masked entries exactly zero the same
way: the gradients of masked entries are zeroed before every optimizer step (momentum and Adam
moments of those entries stay zero) and the weights are multiplied by the masks after it (weight
decay cannot revive them). :class:`Masks` holds the masks, binds them to the parameters (float
copies on each parameter's device and dtype), and saves and loads them as ``mask.pt`` files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from overparam_lit.protocols import network_of
from overparam_lit.pruning.masks import apply_masks_, mask_grads_, mask_optimizer_state_
from overparam_lit.torch_files import load_torch_file
from overparam_lit.utils import atomic_save, check

MASK_FIX = "Point at a mask.pt written by IterativeMagnitudePruning (runs/<run>/imp/level_XX/mask.pt)."


def load_tensors(path: str | Path, what: str, fix: str) -> dict[str, Tensor]:
    """A ``{name: tensor}`` file saved with ``torch.save`` (read by
    :func:`~overparam_lit.torch_files.load_torch_file`: a missing, empty, truncated or corrupt file, or
    a folder, is a :class:`ConfigError` naming it), checked to hold names and tensors only."""
    data = load_torch_file(path, what, fix)
    check(isinstance(data, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in data.items()),
          f"{what} does not hold a mapping of names to tensors", str(path), fix)
    return data


class Masks(Mapping[str, Tensor]):
    """Boolean masks keyed by parameter name (``True`` keeps an entry); a read-only mapping.

    Masks of a stacked model carry the parameters' leading member axis. After :meth:`bind`,
    :meth:`apply_`, :meth:`mask_grads_` and :meth:`mask_optimizer_state_` act on the bound
    parameters; masks that keep every entry leave weights and gradients alone.

    Args:
        masks: ``{parameter name: tensor}``; any dtype, nonzero entries are kept.
    """

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self._masks = {n: m if m.dtype == torch.bool else m != 0 for n, m in masks.items()}
        self._params: list[Tensor] = []
        self._floats: list[Tensor] = []
        self.active = False

    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def bind(self, params: Mapping[str, Tensor]) -> Masks:
        """Align float masks with ``params`` (``dict(module.named_parameters())``; every masked name
        must be there) and zero the masked entries now; returns ``self``."""
        self._params = [params[n] for n in self._masks]
        pairs = zip(self._params, self._masks.values(), strict=True)
        self._floats = [m.to(device=p.device, dtype=p.dtype) for p, m in pairs]
        self.active = not all(bool(m.all()) for m in self._masks.values())
        self.apply_()
        return self

    def apply_(self) -> None:
        """Zero the masked entries of the bound parameters (in place)."""
        if self.active:
            apply_masks_(self._params, self._floats)

    def mask_grads_(self) -> None:
        """Zero the gradients of the masked entries of the bound parameters (in place)."""
        if self.active:
            mask_grads_(self._params, self._floats)

    def mask_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero ``optimizer``'s per-entry state (momentum, Adam moments) at masked entries."""
        mask_optimizer_state_(optimizer, self._params, self._floats)

    def cpu(self) -> dict[str, Tensor]:
        """A plain ``{name: bool tensor}`` dict on the CPU (what checkpoints and ``mask.pt`` hold)."""
        return {n: m.cpu() for n, m in self._masks.items()}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`cpu` to ``path`` atomically (``torch.save``; loads with ``weights_only=True``)."""
        return atomic_save(self.cpu(), path)

    @classmethod
    def load(cls, path: str | Path, what: str = "the mask file", fix: str = MASK_FIX) -> Masks:
        """Masks saved by :meth:`save`; a missing or unreadable file is a ``ConfigError`` saying
        ``what`` it was and ``fix``."""
        return cls(load_tensors(path, what, fix))


def structural_masks(module: nn.Module) -> Masks:
    """A stack's structural masks (the entries each padded member owns) keyed by ``module``'s own
    parameter names: the ``structure`` of ``module`` or of its ``net`` (``net.`` prefixed); empty
    for a single model or a stack of equal widths."""
    net = network_of(module)
    prefix = "net." if net is not module else ""
    return Masks({prefix + n: m for n, m in (getattr(net, "structure", None) or {}).items()})

"""The Hessian of a stack of members as one block-diagonal operator on ``(M, D)`` vectors.

The training objective of a stack is the sum of the members' losses, and member ``i``'s loss
depends only on member ``i``'s slice of every stacked parameter, so the Hessian of the sum is
block diagonal: one product of the summed loss gives every member's own Hessian-vector product.
:class:`MemberHessian` lays the stacked parameters out as rows ``(M, D)`` (row ``i`` holds member
``i``'s entries in the single network's order, parameter after parameter, row-major), so that
batched Lanczos (:func:`overparam_lit.curvature.lanczos_batched`) gets every member's spectrum
for the products of one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from overparam_lit.curvature.hvp import HessianOperator


class MemberHessian:
    """``(M, D) -> (M, D)`` Hessian-vector products of a stacked model's summed loss.

    Args:
        op: a :class:`HessianOperator` of the summed member losses over the stacked parameters
            (built without masks: every entry of each chosen parameter is a coordinate).
        num_members: ``M``.
        masks: ``{name: 0/1 (M, *shape)}`` of entries each member owns and keeps (structural
            masks of padded members combined with pruning masks); a member's Hessian is taken on
            its kept entries only, which :attr:`mask` marks.
    """

    def __init__(self, op: HessianOperator, num_members: int,
                 masks: Mapping[str, Tensor] | None = None) -> None:
        self.op, self.num_members = op, int(num_members)
        self.sizes = [b.numel // self.num_members for b in op.blocks]
        self.dim = sum(self.sizes)
        rows = []
        for b in op.blocks:
            m = (masks or {}).get(b.name)
            if m is None:
                rows.append(torch.ones(self.num_members, b.numel // self.num_members, dtype=torch.bool))
            else:
                rows.append(m.detach().to("cpu").reshape(self.num_members, -1) != 0)
        self.mask = torch.cat(rows, dim=1).to(op.device)

    @property
    def dims(self) -> list[int]:
        """Active dimension of every member."""
        return [int(d) for d in self.mask.sum(1)]

    @property
    def num_hvps(self) -> int:
        """Products of the summed loss spent so far."""
        return self.op.num_hvps

    def to_flat(self, rows: Tensor) -> Tensor:
        """``(M, D)`` -> the operator's flat stacked vector."""
        parts, start = [], 0
        for size in self.sizes:
            parts.append(rows[:, start:start + size].reshape(-1))
            start += size
        return torch.cat(parts)

    def to_rows(self, flat: Tensor) -> Tensor:
        """The operator's flat stacked vector -> ``(M, D)``."""
        parts, start = [], 0
        for size in self.sizes:
            n = size * self.num_members
            parts.append(flat[start:start + n].reshape(self.num_members, size))
            start += n
        return torch.cat(parts, dim=1)

    def matvec(self, rows: Tensor) -> Tensor:
        """Every member's ``H_i v_i`` for rows ``v`` of shape ``(M, D)`` (inactive entries 0)."""
        rows = rows.to(device=self.op.device, dtype=self.op.dtype) * self.mask
        return self.to_rows(self.op.matvec(self.to_flat(rows))) * self.mask

    __call__ = matvec

"""Building, describing and replacing the network of
:class:`~overparam_lit.models.base.OverparamModule`: one network per member width from the family's
``build_network``, stacked for members; each member's row and parameter count; a fresh draw of
the weights (ticket controls); each member on its own and a replacement network (widening); and
the memory a fit needs."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from overparam_lit.models.memory import MemoryEstimate, available_bytes, count_activations
from overparam_lit.models.stack import Member, StackedNet, build_members, seeded
from overparam_lit.utils import ConfigError, check


class MemberNetworks:
    """The network and its members (a mixin of :class:`~overparam_lit.models.base.OverparamModule`)."""

    # ---- building -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _at_width(self, width: int) -> Iterator[None]:
        saved = self.width
        self.width = int(width)
        try:
            yield
        finally:
            self.width = saved

    def _build_at(self, width: int) -> nn.Module:
        """The family's network at ``width`` (drawn from torch's current RNG state)."""
        with self._at_width(width):
            return self.build_network()

    def _meta_network(self, width: int) -> nn.Module:
        """The network at ``width`` on the ``meta`` device (shapes only; nothing is allocated)."""
        try:
            with seeded(0), self._at_width(width), torch.device("meta"):
                return self.build_network()
        except RuntimeError as err:
            if "overflow" not in str(err):
                raise
            raise ConfigError(
                f"the model does not fit in memory: at width {width} a tensor would have more entries "
                f"than can be addressed ({str(err).splitlines()[0][:120]}). Use a smaller width.") from None

    def _build_net(self) -> nn.Module:
        if self.members is None:
            return self.build_network()
        nets = build_members(self._build_at, self.members)
        example = torch.randn((2, *self.input_shape), generator=torch.Generator().manual_seed(0))
        return StackedNet(nets, self._template, check_inputs=example)

    def _member_param_counts(self) -> list[int]:
        if self.members is None:
            return [sum(p.numel() for p in self.net.parameters())]
        counts = []
        structure = self.net.structure
        for m in self.members:
            n = 0
            for name, p in self.net.named_parameters():
                n += int(structure[name][m.index].sum()) if name in structure else p[0].numel()
            counts.append(n)
        return counts

    @property
    def num_members(self) -> int:
        """``M``: 1 for a single model."""
        return 1 if self.members is None else len(self.members)

    def member_rows(self) -> list[dict[str, int]]:
        """``member``, ``seed``, ``width`` and ``num_params`` of every member (one row for a
        single model, with the run's seed)."""
        if self.members is None:
            return [{"member": 0, "seed": self.run_seed, "width": self.width,
                     "num_params": self.num_params}]
        return [{"member": m.index, "seed": m.seed, "width": m.width, "num_params": n}
                for m, n in zip(self.members, self.member_num_params, strict=True)]

    def fresh_state(self, seeds: Sequence[int]) -> dict[str, Tensor]:
        """Parameters and buffers of a fresh initialisation, keyed like ``state_dict``: each
        member's network rebuilt after seeding torch with ``seeds[i]`` (a single model takes one
        seed). Ticket controls use it to re-draw weights."""
        check(len(seeds) == self.num_members, "fresh_state needs one seed per member", list(seeds),
              f"Pass {self.num_members} seed(s).")
        if self.members is None:
            with seeded(seeds[0]):
                net = self.build_network()
            items = {**dict(net.named_parameters()), **dict(net.named_buffers())}
            return {f"net.{k}": v.detach() for k, v in items.items()}
        rebuilt = [Member(m.index, int(s), m.width) for m, s in zip(self.members, seeds, strict=True)]
        stack = StackedNet(build_members(self._build_at, rebuilt), self._template)
        items = {**stack.stacked_params(), **stack.stacked_buffers()}
        return {f"net.{k}": v.detach() for k, v in items.items()}

    # ---- replacing the network (function-preserving widening) ----------------------------
    def member_networks(self) -> list[nn.Module]:
        """Each member's network as a standalone module holding copies of its tensors (for a single
        model, ``[self.net]`` itself). Members must share one shape (no padded widths)."""
        if self.members is None:
            return [self.net]
        check(not self.net.structure, "this needs members of one width (no padding)",
              sorted({m.width for m in self.members}), "Use a fit of one width (--model.seeds only).")
        out = []
        for i in range(self.num_members):
            member = copy.deepcopy(self._template)
            member.load_state_dict(self.net.member_state(i), assign=True)  # keeps dtype and device
            member.train(self.net.training)
            out.append(member)
        return out

    def set_network(self, nets: Sequence[nn.Module], width: int | None = None) -> None:
        """Make ``nets`` (one per member, equal shapes) the network, and update what describes it:
        ``width`` (when given: a family width with exactly these shapes), the members' widths, the
        parameter counts and the shape template. Used when a callback widens the network."""
        check(len(nets) == self.num_members, "set_network needs one network per member", len(nets),
              f"Pass {self.num_members} network(s).")
        if self.members is None:
            self.net = nets[0]
        else:
            stack = StackedNet(list(nets), copy.deepcopy(nets[0]).to("meta"))
            stack.train(self.net.training)
            self.net = stack
        if width is not None:
            self.width = int(width)
            if self.members is not None:
                self.members = [Member(m.index, m.seed, int(width)) for m in self.members]
        count = sum(p.numel() for p in nets[0].parameters())
        self.__dict__["_template"] = copy.deepcopy(nets[0]).to("meta")
        self._params_per_member = count
        self.member_num_params = [count] * self.num_members
        self.num_params = count

    # ---- memory -------------------------------------------------------------------------
    def estimate_memory(self, batch_size: int) -> MemoryEstimate:
        """Bytes a fit of this module needs (parameters with gradients and Adam's two states, and
        the activations of a batch of ``batch_size``), estimated without allocating anything."""
        acts = count_activations(self._template, self.input_shape) if batch_size > 0 else 0
        return MemoryEstimate(self.num_members, self._params_per_member, acts, int(batch_size))

    def _check_memory(self, estimate: MemoryEstimate, device: torch.device | str, when: str) -> None:
        free = available_bytes(device)
        need = estimate.parameter_bytes // 2 if estimate.batch_size == 0 else estimate.total_bytes
        if free is None or need <= 0.9 * free:
            return
        fix = ("Fit fewer members at once (split --model.seeds or --model.widths over several fits; "
               "`overparam-lit sweep` does this), use a smaller batch or smaller widths."
               if self.members is not None else "Use a smaller width or batch size.")
        raise ConfigError(
            f"the model does not fit in memory {when}: it needs {estimate.describe()}, but "
            f"{torch.device(device).type} has {free / 1024**3:.3g} GiB available. {fix}")

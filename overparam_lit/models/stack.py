"""Members: many networks of one family trained as one stacked network (no Lightning here).

A *member* is one ``(seed, width)`` pair. :func:`build_members` builds every member's own network
exactly as a single run would (``torch.manual_seed(seed)``, then the family's ``build_network`` at
that width), and :class:`StackedNet` holds them as one module whose parameters and buffers have a
leading member axis ``M``:

- parameter names are those of the single network (``1.weight`` has shape ``(M, *shape)``), so
  pruning masks, Hessian subsets and checkpoints read like a single model's;
- members narrower than the widest are *padded*: each tensor of a width-``k`` member sits in the
  leading slice of the widest member's tensor, the rest is zero and stays zero under a fixed
  structural mask (:attr:`StackedNet.structure`), so a padded member computes exactly its own
  width-``k`` function (checked when the stack is built);
- the forward pass maps inputs ``(B, *input_shape)`` (one batch for every member) or
  ``(M, B, *input_shape)`` to outputs ``(M, B, ...)``: plain ``Flatten/Linear/activation`` stacks
  run as batched matrix products, anything else through ``torch.func.vmap`` over
  ``functional_call`` (BatchNorm keeps running statistics per member).

The training objective of a stack is the *sum* of the members' mean losses: its gradient with
respect to member ``i``'s slice is member ``i``'s own gradient, so element-wise optimizers (SGD,
momentum, Adam, AdamW) move every member exactly as its single run would.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from overparam_lit.activations import ACTIVATIONS
from overparam_lit.utils import ConfigError, check

ELEMENTWISE = tuple(ACTIVATIONS.values())


@dataclass(frozen=True)
class Member:
    """One member of a stacked fit: its position, seed and width."""

    index: int
    seed: int
    width: int


def member_grid(seeds: Sequence[int], widths: Sequence[int]) -> list[Member]:
    """Members ``widths x seeds`` (width-major: all seeds of the first width, then the next)."""
    out = []
    for w in widths:
        for s in seeds:
            out.append(Member(len(out), int(s), int(w)))
    return out


def control_seed(seed: int, member_seed: int) -> int:
    """Seed of a control's random draws (fresh weights, random masks, perturbations) for the member
    whose own seed is ``member_seed``: distinct per member, and never the member's initial draw."""
    return 1_000_003 * (int(seed) + 1) + int(member_seed)


def parse_seeds(seeds: int | Sequence[int] | None) -> list[int] | None:
    """``S`` -> ``[0, ..., S-1]``; a list is checked (non-empty, distinct, non-negative)."""
    if seeds is None:
        return None
    if isinstance(seeds, bool):
        raise ConfigError(f"model.seeds must be a number of seeds or a list of seeds (got {seeds!r}). "
                          "Set --model.seeds 4 or --model.seeds [0, 1, 2].")
    if isinstance(seeds, int):
        check(seeds >= 1, "model.seeds must be a positive number of seeds (or a list of seeds)", seeds,
              "Set --model.seeds to e.g. 4 (members with seeds 0..3) or to a list such as [0, 5, 9].")
        return list(range(seeds))
    out = list(seeds)
    check(len(out) >= 1, "model.seeds is an empty list", out,
          "Give at least one seed, e.g. --model.seeds [0, 1, 2], or leave it unset for a single model.")
    check(all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in out),
          "model.seeds must hold non-negative integers", out, "Use e.g. [0, 1, 2].")
    dup = sorted({s for s in out if out.count(s) > 1})
    check(not dup, f"model.seeds repeats seeds {dup}", out,
          "Give each seed once: two members with one seed would be identical.")
    return [int(s) for s in out]


def parse_widths(widths: Sequence[int] | None) -> list[int] | None:
    """A list of distinct positive widths (``None`` stays ``None``)."""
    if widths is None:
        return None
    out = list(widths)
    check(len(out) >= 1, "model.widths is an empty list", out,
          "Give at least one width, e.g. --model.widths [8, 16, 32], or leave it unset.")
    check(all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in out),
          "every entry of model.widths must be a positive integer", out,
          "Use widths >= 1, e.g. [4, 8, 16].")
    dup = sorted({w for w in out if out.count(w) > 1})
    check(not dup, f"model.widths repeats widths {dup}", out,
          "Give each width once (use model.seeds for repeats).")
    return [int(w) for w in out]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator with ``seed`` (as ``seed_everything`` does for a single run) and
    restore its state afterwards. Only the CPU generator is touched: networks are built on the CPU."""
    state = torch.random.get_rng_state()
    torch.random.default_generator.manual_seed(int(seed))
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def build_members(build: Callable[[int], nn.Module], members: Sequence[Member]) -> list[nn.Module]:
    """Each member's network, ``build(width)`` right after seeding torch with its seed."""
    nets = []
    for m in members:
        with seeded(m.seed):
            nets.append(build(m.width))
    return nets


def _path(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    *mods, attr = name.split(".")
    return functools.reduce(getattr, mods, root), attr


def leading(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The index of the leading block of ``shape`` inside a larger tensor (where a narrower member
    sits in the widest member's tensor)."""
    return tuple(slice(0, s) for s in shape)


class StackedNet(nn.Module):
    """``M`` networks of one architecture as one module with stacked parameters.

    Args:
        nets: each member's own network (see :func:`build_members`); copied, not shared.
        template: a network of the widest member's shapes (for example built on the ``meta``
            device); only its structure is used.
        check_inputs: an example input batch ``(B, *input_shape)``; when given, every member's
            stacked output is compared with its own network's output (eval mode) and a
            :class:`ConfigError` explains a network whose padding is not exact.

    Attributes:
        num_members: ``M``.
        structure: ``{name: bool (M, *shape)}`` of parameters whose members are padded (entries of
            member ``i`` outside its own shape are ``False``); empty when every member has the
            widest shape.
    """

    def __init__(self, nets: Sequence[nn.Module], template: nn.Module,
                 check_inputs: Tensor | None = None) -> None:
        super().__init__()
        check(len(nets) >= 1, "a stack needs at least one network", len(nets), "Pass one or more.")
        self.num_members = len(nets)
        shapes = {n: tuple(p.shape) for n, p in template.named_parameters()}
        bshapes = {n: tuple(b.shape) for n, b in template.named_buffers()}
        for i, net in enumerate(nets):
            own = {n: tuple(p.shape) for n, p in net.named_parameters()}
            own_b = {n: tuple(b.shape) for n, b in net.named_buffers()}
            self._check_layout(i, own, shapes, "parameters")
            self._check_layout(i, own_b, bshapes, "buffers")
        # the modules of one network hold the stacked tensors (same names as a single network)
        holder = copy.deepcopy(template).to("meta")
        for name, child in holder.named_children():
            self.add_module(name, child)
        self.__dict__["_template"] = copy.deepcopy(template).to("meta")
        structure: dict[str, Tensor] = {}
        for name, shape in shapes.items():
            data, mask = self._stack([dict(n.named_parameters())[name].detach() for n in nets], shape)
            mod, attr = _path(self, name)
            setattr(mod, attr, nn.Parameter(data, requires_grad=dict(template.named_parameters())
                                            [name].requires_grad))
            if mask is not None:
                structure[name] = mask
        for name, shape in bshapes.items():
            data, _ = self._stack([dict(n.named_buffers())[name].detach() for n in nets], shape)
            mod, attr = _path(self, name)
            mod.register_buffer(attr, data)
        # training flags of the held modules drive the template's (eval(), BatchNorm)
        self._pairs = list(zip(self.modules(), self._template.modules(), strict=True))
        self._param_names = list(shapes)
        self._buffer_names = list(bshapes)
        # (name, owning module, attribute) of every stacked tensor, read at each forward
        self._slots = [(n, *_path(self, n)) for n in self._param_names]
        self._buffer_slots = [(n, *_path(self, n)) for n in self._buffer_names]
        self.structure = structure
        self._plan = _mlp_plan(template)
        if check_inputs is not None:
            self.check_members(nets, check_inputs)

    @staticmethod
    def _check_layout(i: int, own: dict[str, tuple[int, ...]], widest: dict[str, tuple[int, ...]],
                      what: str) -> None:
        if set(own) != set(widest):
            diff = sorted(set(own) ^ set(widest))
            raise ConfigError(
                f"member {i}'s network has other {what} than the widest member's (differing names "
                f"{diff[:4]}). Members of one fit must share one architecture and differ only in "
                "sizes; fit these widths separately.")
        for n, s in own.items():
            w = widest[n]
            if len(s) != len(w) or any(a > b for a, b in zip(s, w, strict=True)):
                raise ConfigError(
                    f"member {i}'s {n!r} has shape {s}, which does not fit inside the widest "
                    f"member's {w}. Widths members need every tensor to grow with the width; fit "
                    "these widths separately.")

    def _stack(self, tensors: list[Tensor], shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
        first = tensors[0]
        if all(tuple(t.shape) == shape for t in tensors):
            return torch.stack(tensors).clone(), None
        data = torch.zeros((len(tensors), *shape), dtype=first.dtype, device=first.device)
        mask = torch.zeros((len(tensors), *shape), dtype=torch.bool, device=first.device)
        for i, t in enumerate(tensors):
            sl = (i, *leading(tuple(t.shape)))
            data[sl] = t
            mask[sl] = True
        return data, mask

    # ---- the stacked tensors ------------------------------------------------------------------
    def stacked_params(self) -> dict[str, Tensor]:
        """``{name: (M, *shape)}``, read through attributes (``functional_call`` swaps them)."""
        return {n: getattr(mod, attr) for n, mod, attr in self._slots}

    def stacked_buffers(self) -> dict[str, Tensor]:
        """``{name: (M, *shape)}`` of the buffers (BatchNorm statistics per member)."""
        return {n: getattr(mod, attr) for n, mod, attr in self._buffer_slots}

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member ``i``'s parameters and buffers, keyed like a single network's ``state_dict``
        (cloned; a padded member's tensors keep the widest shape)."""
        check(0 <= i < self.num_members, "member index out of range", i,
              f"Use 0 <= i < {self.num_members}.")
        tensors = {**self.stacked_params(), **self.stacked_buffers()}
        return {n: t[i].detach().clone() for n, t in tensors.items()}

    @torch.no_grad()
    def load_member_state(self, i: int, state: dict[str, Tensor]) -> None:
        """Write a single network's tensors (its own, possibly narrower, shapes) into member ``i``;
        the padding outside them is zeroed."""
        own = {**self.stacked_params(), **self.stacked_buffers()}
        for n, v in state.items():
            if n in own:
                dst = own[n][i]
                if n in self.structure:
                    dst.zero_()
                dst[leading(tuple(v.shape))].copy_(v)

    # ---- forward ------------------------------------------------------------------------------
    def _sync_modes(self) -> None:
        for held, tmpl in self._pairs:
            tmpl.training = held.training

    def forward(self, x: Tensor, shared: bool | None = None) -> Tensor:
        """Outputs ``(M, B, ...)`` for inputs ``(B, ...)`` (``shared``: one batch for every member)
        or ``(M, B, ...)`` (``shared=False``: a batch per member)."""
        if shared is None:
            shared = True
        if self._plan is not None:
            return self._forward_mlp(x, shared)
        self._sync_modes()
        params, buffers = self.stacked_params(), self.stacked_buffers()
        template = self._template

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(template, {**p, **b}, (xb,))

        return vmap(one, in_dims=(0, 0, None if shared else 0), randomness="different")(
            params, buffers, x)

    def _forward_mlp(self, x: Tensor, shared: bool) -> Tensor:
        assert self._plan is not None
        params = self.stacked_params()
        h = x.unsqueeze(0) if shared else x
        for kind, weight, bias, act in self._plan:
            if kind == "flatten":
                h = h.flatten(2)
            elif kind == "act":
                h = act(h)  # type: ignore[operator]
            else:
                w, b = params[weight], params[bias] if bias else None
                if h.shape[0] == w.shape[0] and b is not None:
                    h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
                else:
                    h = torch.matmul(h, w.transpose(1, 2))  # broadcasts a shared (1, B, D) input
                    if b is not None:
                        h = h + b.unsqueeze(1)
        return h

    # ---- checks -------------------------------------------------------------------------------
    @torch.no_grad()
    def check_members(self, nets: Sequence[nn.Module], x: Tensor, tol: float = 1e-4) -> None:
        """Refuse a stack whose members do not compute their own networks' outputs on ``x``."""
        was = [m.training for m in self.modules()]
        self.eval()
        try:
            out = self(x.to(next(iter(self.parameters())).device))
        finally:
            for m, mode in zip(self.modules(), was, strict=True):
                m.training = mode
        for i, net in enumerate(nets):
            modes = [m.training for m in net.modules()]
            net.eval()
            try:
                ref = net(x)
            finally:
                for m, mode in zip(net.modules(), modes, strict=True):
                    m.training = mode
            err = float((out[i].float() - ref.float()).abs().max()) if ref.numel() else 0.0
            scale = max(1.0, float(ref.float().abs().max()) if ref.numel() else 1.0)
            if not err <= tol * scale:
                raise ConfigError(
                    f"member {i} of the stack does not reproduce its own network (largest output "
                    f"difference {err:.3g}). Padding a narrower member with zeros changes this "
                    "network's function (for example a LayerNorm or a mean over the width axis); "
                    "fit these widths separately, or stack seeds of one width only.")


def _mlp_plan(net: nn.Module) -> list[tuple[str, str, str, nn.Module | None]] | None:
    """``(kind, weight name, bias name, activation)`` steps for plain ``Flatten / Linear /
    activation`` stacks (the MLP family), which run as batched matrix products; ``None`` otherwise."""
    if not isinstance(net, nn.Sequential):
        return None
    plan: list[tuple[str, str, str, nn.Module | None]] = []
    for i, m in enumerate(net):
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            plan.append(("flatten", "", "", None))
        elif type(m) is nn.Linear:
            plan.append(("linear", f"{i}.weight", f"{i}.bias" if m.bias is not None else "", None))
        elif type(m) in ELEMENTWISE:
            plan.append(("act", "", "", m))
        else:
            return None
    return plan

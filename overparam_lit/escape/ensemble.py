"""Seed ensembles: S independent copies of one network trained as stacked parameters.

Every parameter gets a leading seed axis ``S``. The forward pass maps inputs ``(S, B, ...)``
(each seed its own batch) or ``(B, ...)`` (one batch for all seeds) to outputs ``(S, B, ...)``;
the training objective is the *sum* of the per-seed mean losses, whose gradient with respect
to seed ``s``'s slice is exactly the gradient of seed ``s``'s own loss. Element-wise optimizers
(SGD, momentum, Adam, AdamW) therefore move every seed exactly as a separate run would.

Plain ``Flatten / Linear / elementwise activation`` stacks (the MLP family) run as batched
matrix products (``torch.baddbmm``); any other network runs through
``torch.func.vmap(functional_call(...))``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from overparam_lit.utils import check

_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.Identity,
                nn.Softplus, nn.ELU)


def seed_nets(factory: Callable[[], nn.Module], seeds: Sequence[int]) -> list[nn.Module]:
    """One network per seed, each built right after ``torch.manual_seed(seed)``.

    This is the initialisation a single run gets from ``seed_everything(seed)`` followed by
    building the model, so seed ``s`` of an ensemble starts where the single run starts. The
    global RNG state is restored afterwards.
    """
    check(len(seeds) >= 1, "a seed ensemble needs at least one seed", list(seeds),
          "Pass e.g. seeds=[0, 1, 2].")
    nets = []
    with torch.random.fork_rng(devices=[]):
        for s in seeds:
            torch.manual_seed(int(s))
            nets.append(factory())
    return nets


def _key(name: str) -> str:
    return name.replace(".", "__")


class StackedEnsemble(nn.Module):
    """S networks of identical architecture with parameters stacked along a leading axis.

    Args:
        nets: the per-seed networks (same architecture; see :func:`seed_nets`). They are
            copied, not shared.

    Attributes:
        num_seeds: S.
        base: a parameter-free template of one network (on the ``meta`` device).
    """

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        check(len(nets) >= 1, "StackedEnsemble needs at least one network", len(nets),
              "Pass a non-empty list of networks.")
        shapes = [[tuple(p.shape) for p in n.parameters()] for n in nets]
        check(all(s == shapes[0] for s in shapes), "ensemble members differ in architecture",
              [len(s) for s in shapes], "Build every member with the same factory.")
        self.num_seeds = len(nets)
        params, buffers = stack_module_state(list(nets))
        self._names = list(params)
        self._buffer_names = list(buffers)
        self.stacked = nn.ParameterDict(
            {_key(n): nn.Parameter(p.detach().clone()) for n, p in params.items()})
        for n, b in buffers.items():
            self.register_buffer("buf__" + _key(n), b.detach().clone())
        # not a registered submodule: the template holds no data and must not move with .to()
        self.__dict__["base"] = copy.deepcopy(nets[0]).to("meta")
        self._plan = self._mlp_plan(nets[0])

    # ---- layout ------------------------------------------------------------------------------
    @staticmethod
    def _mlp_plan(net: nn.Module) -> list[tuple[str, object]] | None:
        """``[("flatten", None), ("linear", name), ("act", module), ...]`` for MLP-like stacks."""
        if not isinstance(net, nn.Sequential):
            return None
        plan: list[tuple[str, object]] = []
        for i, m in enumerate(net):
            if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
                plan.append(("flatten", None))
            elif type(m) is nn.Linear:
                plan.append(("linear", str(i)))
            elif isinstance(m, _ELEMENTWISE):
                plan.append(("act", m))
            else:
                return None
        return plan

    def params(self) -> dict[str, Tensor]:
        """``{name: stacked tensor (S, *shape)}`` keyed by the single network's names."""
        return {n: self.stacked[_key(n)] for n in self._names}

    def buffers_dict(self) -> dict[str, Tensor]:
        """``{name: stacked buffer (S, *shape)}``."""
        return {n: getattr(self, "buf__" + _key(n)) for n in self._buffer_names}

    def member(self, i: int) -> nn.Module:
        """A standalone copy of seed ``i``'s network (ordinary module, detached parameters)."""
        check(0 <= i < self.num_seeds, "ensemble member index out of range", i,
              f"Use 0 <= i < {self.num_seeds}.")
        net = copy.deepcopy(self.base).to_empty(device=next(iter(self.stacked.values())).device)
        state = {n: t[i].detach().clone() for n, t in {**self.params(), **self.buffers_dict()}.items()}
        net.load_state_dict(state)
        return net

    def load_member(self, i: int, net: nn.Module) -> None:
        """Overwrite seed ``i``'s parameters and buffers with those of ``net``."""
        with torch.no_grad():
            for n, p in net.named_parameters():
                self.stacked[_key(n)][i].copy_(p)
            for n, b in net.named_buffers():
                getattr(self, "buf__" + _key(n))[i].copy_(b)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor, shared: bool = False) -> Tensor:
        """Outputs ``(S, B, ...)``.

        Args:
            x: ``(S, B, *input_shape)``, a batch per seed, or with ``shared=True``
                ``(B, *input_shape)``, one batch for every seed.
            shared: whether ``x`` is one batch for all seeds.
        """
        if not shared:
            check(x.shape[0] == self.num_seeds, "per-seed inputs need a leading seed axis",
                  tuple(x.shape), f"Pass (S={self.num_seeds}, B, ...) or shared=True.")
        if self._plan is not None:
            return self._forward_mlp(x, shared)
        params, buffers = self.params(), self.buffers_dict()

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(self.base, {**p, **b}, (xb,))

        return vmap(one, in_dims=(0, 0, None if shared else 0), randomness="different")(
            params, buffers, x)

    def _forward_mlp(self, x: Tensor, shared: bool) -> Tensor:
        assert self._plan is not None
        h = x.unsqueeze(0) if shared else x
        for kind, arg in self._plan:
            if kind == "flatten":
                h = h.flatten(2)
            elif kind == "linear":
                w = self.stacked[_key(f"{arg}.weight")]
                b_key = _key(f"{arg}.bias")
                if h.shape[0] == 1 and self.num_seeds > 1:  # shared input: one matmul for all
                    h = torch.einsum("bi,soi->sbo", h[0], w)
                else:
                    h = torch.bmm(h, w.transpose(1, 2))
                if b_key in self.stacked:
                    h = h + self.stacked[b_key].unsqueeze(1)
            else:
                h = arg(h)  # type: ignore[operator]
        return h


def relative_losses(losses: Tensor, target_variance: float) -> Tensor:
    """Per-seed loss divided by the variance of the targets (1 is a constant predictor)."""
    check(target_variance > 0, "target variance must be positive", target_variance,
          "Check that the regression targets are not constant.")
    return losses / float(target_variance)


def success_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Success rate and its Wilson score interval ``(rate, low, high)``."""
    check(trials >= 1 and 0 <= successes <= trials, "need 0 <= successes <= trials >= 1",
          (successes, trials), "Count successes among at least one trial.")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def fit_ensemble(
    ens: StackedEnsemble,
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float = 1e-2,
    batch_size: int | None = None,
    order_seeds: Sequence[int] | None = None,
    lr_final: float | None = None,
    log_every: int = 0,
) -> tuple[Tensor, list[Tensor]]:
    """Train every member on MSE with Adam (plain loop); returns final full-set losses ``(S,)``
    and the logged loss curves (one ``(S,)`` tensor every ``log_every`` steps).

    ``batch_size=None`` is full-batch gradient descent; otherwise each member draws its own
    batches from its own ``order_seeds`` permutation stream. ``lr_final`` decays the learning
    rate geometrically to that value over the run.
    """
    check(steps >= 1, "steps must be >= 1", steps, "Train for at least one step.")
    s_count, n = ens.num_seeds, x.shape[0]
    opt = torch.optim.Adam(ens.parameters(), lr=lr)
    gamma = (lr_final / lr) ** (1.0 / steps) if lr_final else 1.0
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    gens = [torch.Generator().manual_seed(int(s)) for s in (order_seeds or range(s_count))]
    y = y.reshape(n, -1)
    curve: list[Tensor] = []
    perms: Tensor | None = None
    pos = 0
    for step in range(steps):
        if batch_size is None:
            out = ens(x, shared=True)
            losses = (out - y.unsqueeze(0)).pow(2).flatten(1).mean(1)
        else:
            if perms is None or pos + batch_size > n:
                perms, pos = torch.stack([torch.randperm(n, generator=g) for g in gens]), 0
            idx = perms[:, pos : pos + batch_size]
            pos += batch_size
            losses = (ens(x[idx]) - y[idx]).pow(2).flatten(1).mean(1)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        sched.step()
        if log_every and step % log_every == 0:
            curve.append(losses.detach().clone())
    with torch.no_grad():
        final = (ens(x, shared=True) - y.unsqueeze(0)).pow(2).flatten(1).mean(1)
    return final, curve

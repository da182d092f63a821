"""Stacked members on their own: a :class:`StackedNet` holds each member's own network (same
tensors, padded members included) and computes what that network computes, forward and backward,
on the batched-matmul path (plain MLPs) and the ``vmap`` path (anything else, BatchNorm included)."""

from __future__ import annotations

import pytest
import torch
from tolerances import tol
from torch import nn

from overparam_lit.models.stack import (
    Member,
    StackedNet,
    build_members,
    control_seed,
    leading,
    member_grid,
    parse_seeds,
    parse_widths,
    seeded,
)
from overparam_lit.utils import ConfigError

IN, CLASSES, BATCH, LENGTH = 8, 3, 16, 8


def mlp(width: int) -> nn.Module:
    """A plain ``Flatten / Linear / activation`` stack: the batched-matmul path."""
    return nn.Sequential(nn.Flatten(), nn.Linear(IN, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, CLASSES))


def conv_bn(width: int) -> nn.Module:
    """A conv net with BatchNorm: the ``vmap`` path, with running statistics per member."""
    return nn.Sequential(nn.Conv1d(1, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(), nn.Flatten(),
                         nn.Linear(width * LENGTH, CLASSES))


def stack_of(build, members: list[Member], check: bool = True) -> tuple[StackedNet, list[nn.Module]]:
    nets = build_members(build, members)
    with torch.device("meta"):
        template = build(max(m.width for m in members))
    x = torch.randn(2, 1, LENGTH, generator=torch.Generator().manual_seed(1)) if check else None
    return StackedNet(nets, template, check_inputs=x), nets


def inputs(seed: int = 0, *lead: int) -> torch.Tensor:
    return torch.randn(*lead, BATCH, 1, LENGTH, generator=torch.Generator().manual_seed(seed))


def assert_close(out: torch.Tensor, ref: torch.Tensor, n_terms: int) -> None:
    # the stack runs other kernels than the single network (batched matmul or vmap, padded sums with
    # exact zeros): the same terms added in another order, so float32 rounding of n_terms-long sums
    # of size max|ref|; equal on most CPUs, but not promised by any kernel
    bound = tol(torch.float32, n_terms, max(1.0, float(ref.abs().max())))
    assert float((out - ref).abs().max()) <= bound


def crop(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t[leading(tuple(like.shape))]


def padding(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The entries of the widest-shape ``t`` outside the block of ``like``."""
    outside = torch.ones_like(t, dtype=torch.bool)
    outside[leading(tuple(like.shape))] = False
    return t[outside]


# ---- members, seeds and widths --------------------------------------------------------------------
def test_member_grid_is_width_major() -> None:
    grid = member_grid([5, 7], [4, 16])
    assert grid == [Member(0, 5, 4), Member(1, 7, 4), Member(2, 5, 16), Member(3, 7, 16)]


def test_control_seeds_are_distinct_and_never_a_member_s_own() -> None:
    seeds = range(50)
    drawn = [control_seed(c, s) for c in range(4) for s in seeds]
    assert len(set(drawn)) == len(drawn) and not set(drawn) & set(seeds)


@pytest.mark.parametrize(("given", "parsed"), [(None, None), (3, [0, 1, 2]), ([9, 0, 4], [9, 0, 4])])
def test_parse_seeds(given, parsed) -> None:
    assert parse_seeds(given) == parsed


@pytest.mark.parametrize(("given", "match"), [
    (0, "positive number of seeds"), (True, "number of seeds or a list"), ([], "empty list"),
    ([1, 1, 2], r"repeats seeds \[1\]"), ([-1], "non-negative integers"), ([1.5], "non-negative integers"),
])
def test_bad_seeds_are_refused(given, match) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_seeds(given)


def test_parse_widths() -> None:
    assert parse_widths(None) is None and parse_widths((16, 4)) == [16, 4]
    for bad, match in (([], "empty list"), ([0, 4], "positive integer"), ([True], "positive integer"),
                       ([4, 8, 4], r"repeats widths \[4\]")):
        with pytest.raises(ConfigError, match=match):
            parse_widths(bad)


def test_seeded_draws_as_manual_seed_and_leaves_the_outer_stream_alone() -> None:
    torch.manual_seed(123)
    outer = torch.rand(3), torch.rand(3)
    torch.manual_seed(7)
    own = torch.rand(4)
    torch.manual_seed(123)
    first = torch.rand(3)
    with seeded(7):
        inside = torch.rand(4)
    assert torch.equal(inside, own) and torch.equal(first, outer[0])
    assert torch.equal(torch.rand(3), outer[1])


def test_build_members_builds_each_network_as_a_single_run_would() -> None:
    members = member_grid([3, 11], [4, 6])
    nets = build_members(mlp, members)
    for m, net in zip(members, nets, strict=True):
        torch.manual_seed(m.seed)
        alone = mlp(m.width)
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), alone.state_dict().values(),
                                                      strict=True))


def test_leading_is_the_narrow_block() -> None:
    big = torch.arange(24).reshape(4, 6)
    assert leading((2, 3)) == (slice(0, 2), slice(0, 3))
    assert torch.equal(big[leading((2, 3))], torch.tensor([[0, 1, 2], [6, 7, 8]]))


# ---- the stacked tensors ------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [mlp, conv_bn], ids=["mlp", "conv_bn"])
def test_members_hold_their_own_networks_tensors(build) -> None:
    members = member_grid([0, 1], [3, 5])
    stack, nets = stack_of(build, members)
    assert stack.num_members == 4
    for i, net in enumerate(nets):
        state = stack.member_state(i)
        own = net.state_dict()
        assert set(state) == set(own)
        for name, t in own.items():
            assert torch.equal(crop(state[name], t), t), (i, name)
            assert not padding(state[name], t).any(), (i, name)  # padding is zero
            if name in stack.structure:
                assert stack.structure[name][i].sum() == t.numel() and crop(stack.structure[name][i], t).all()
    narrow, wide = (dict(net.named_parameters()) for net in (nets[0], nets[-1]))
    assert set(stack.structure) == {n for n in wide if narrow[n].shape != wide[n].shape}  # the padded ones
    assert dict(stack.named_parameters())["1.weight"].shape[0] == 4  # the single network's names
    with pytest.raises(ConfigError, match="member index out of range"):
        stack.member_state(4)


def test_equal_widths_need_no_structure() -> None:
    stack, _ = stack_of(mlp, member_grid([0, 1, 2], [5]))
    assert stack.structure == {}


def test_a_loaded_member_state_replaces_the_member_and_zeroes_its_padding() -> None:
    stack, nets = stack_of(mlp, member_grid([0], [3, 5]))
    torch.manual_seed(99)
    other = mlp(3)
    stack.load_member_state(0, other.state_dict())
    state = stack.member_state(0)
    for name, t in other.state_dict().items():
        assert torch.equal(crop(state[name], t), t) and not padding(state[name], t).any()
    wide = stack.member_state(1)
    assert all(torch.equal(wide[name], t) for name, t in nets[1].state_dict().items())  # untouched


# ---- forward and backward -------------------------------------------------------------------------------
@pytest.mark.numeric
@pytest.mark.parametrize("build", [mlp, conv_bn], ids=["mlp", "conv_bn"])
def test_stacked_outputs_equal_each_member_s_own(build) -> None:
    members = member_grid([0, 1], [3, 5])
    stack, nets = stack_of(build, members)
    stack.eval()
    x, per_member = inputs(0), inputs(1, len(members))
    with torch.no_grad():
        shared, own = stack(x), stack(per_member, shared=False)
        assert shared.shape == own.shape == (len(members), BATCH, CLASSES)
        for i, net in enumerate(nets):
            net.eval()
            n_terms = 5 * LENGTH  # the widest sum: the last layer over width x positions
            assert_close(shared[i], net(x), n_terms)
            assert_close(own[i], net(per_member[i]), n_terms)


@pytest.mark.numeric
def test_batchnorm_statistics_are_kept_per_member() -> None:
    stack, nets = stack_of(conv_bn, member_grid([0, 1], [4]))
    x = inputs(2)
    stack.train()
    with torch.no_grad():
        stack(x)
    buffers = stack.stacked_buffers()
    for i, net in enumerate(nets):
        net.train()
        with torch.no_grad():
            net(x)
        for name in ("1.running_mean", "1.running_var"):
            # a batch statistic: a sum over batch x positions
            assert_close(buffers[name][i], net.get_buffer(name), BATCH * LENGTH)
        assert int(buffers["1.num_batches_tracked"][i]) == 1
    assert not torch.equal(buffers["1.running_mean"][0], buffers["1.running_mean"][1])  # two seeds


@pytest.mark.numeric
@pytest.mark.parametrize("build", [mlp, conv_bn], ids=["mlp", "conv_bn"])
def test_the_summed_loss_gives_each_member_its_own_gradient(build) -> None:
    members = member_grid([0, 1], [3, 5])
    stack, nets = stack_of(build, members)
    x, y = inputs(3), torch.arange(BATCH) % CLASSES
    out = stack(x)
    sum(nn.functional.cross_entropy(out[i], y) for i in range(len(members))).backward()
    grads = {n: p.grad for n, p in stack.named_parameters()}
    for i, net in enumerate(nets):
        nn.functional.cross_entropy(net(x), y).backward()
        for name, p in net.named_parameters():
            g = grads[name][i]
            # a weight's gradient sums over the batch and positions, through the widest layer
            assert_close(crop(g, p.grad), p.grad, BATCH * LENGTH * 5)
            assert not padding(g, p.grad).any()  # padding gets no gradient


# ---- refused stacks ---------------------------------------------------------------------------------------
def test_stacks_that_cannot_hold_their_members_are_refused() -> None:
    with torch.device("meta"):
        template = mlp(4)
    with pytest.raises(ConfigError, match="at least one network"):
        StackedNet([], template)
    with pytest.raises(ConfigError, match="does not fit inside the widest"):
        StackedNet([mlp(6)], template)
    with pytest.raises(ConfigError, match="other parameters than the widest"):
        StackedNet([nn.Sequential(nn.Flatten(), nn.Linear(IN, CLASSES))], template)


def test_padding_that_changes_a_member_s_function_is_refused() -> None:
    def normed(width: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(IN, width), nn.LayerNorm(width),
                             nn.Linear(width, CLASSES))

    stack_of(normed, member_grid([0, 1], [4]))  # one width: nothing padded
    with pytest.raises(ConfigError, match="member 0 of the stack does not reproduce its own network"):
        stack_of(normed, member_grid([0], [2, 4]))

"""Pure pruning functions against hand-checked masks and independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from overparam_lit import pruning
from overparam_lit.utils import ConfigError


def test_layerwise_magnitude_hand_checked():
    w = {"a": torch.tensor([[0.1, -0.5], [0.3, 0.05]]), "b": torch.tensor([1.0, -2.0, 0.2, 0.0])}
    m = pruning.full_masks(w)
    new = pruning.magnitude_prune(w, m, 0.5, "layerwise")
    assert new["a"].tolist() == [[False, True], [True, False]]
    assert new["b"].tolist() == [True, True, False, False]


def test_global_magnitude_hand_checked_with_own_density():
    w = {"a": torch.tensor([0.1, 0.9, 0.8, 0.7]), "b": torch.tensor([0.05, 0.6, 0.01, 0.02]),
         "out": torch.tensor([0.5, 0.4, 0.3, 0.2])}
    m = pruning.full_masks(w)
    new = pruning.magnitude_prune(w, m, 0.5, "global", own_density={"out": 0.75})
    # pool a+b (8 entries) keeps 4 largest: .9 .8 .7 .6 ; out keeps 3 of 4 on its own
    assert new["a"].tolist() == [False, True, True, True]
    assert new["b"].tolist() == [False, True, False, False]
    assert new["out"].tolist() == [True, True, True, False]


def test_pruned_entries_never_come_back():
    w = {"a": torch.tensor([5.0, 0.1, 0.2, 0.3])}
    m = {"a": torch.tensor([False, True, True, True])}
    new = pruning.magnitude_prune(w, m, 0.5, "layerwise")
    assert new["a"].tolist() == [False, False, True, True]


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_density_after_levels_matches_numpy(scope):
    g = torch.Generator().manual_seed(0)
    shapes = {"l1": (37, 11), "l2": (19, 23), "l3": (5, 7)}
    masks = pruning.full_masks({n: torch.zeros(s) for n, s in shapes.items()})
    f = 0.2
    for level in range(1, 6):
        w = {n: torch.randn(s, generator=g) for n, s in shapes.items()}  # weights change each level
        new = pruning.magnitude_prune(w, masks, (1 - f) ** level, scope)
        # independent numpy computation of the same rule
        if scope == "layerwise":
            for n in shapes:
                size = int(np.prod(shapes[n]))
                k = int(round(size * (1 - f) ** level))
                a = np.where(masks[n].numpy().ravel(), np.abs(w[n].numpy().ravel()), -np.inf)
                keep = np.zeros(size, bool)
                keep[np.argsort(-a, kind="stable")[:k]] = True
                assert (new[n].numpy().ravel() == keep).all()
                assert int(new[n].sum()) == k
        else:
            allw = np.concatenate([np.abs(w[n].numpy().ravel()) for n in shapes])
            alive = np.concatenate([masks[n].numpy().ravel() for n in shapes])
            k = int(round(allw.size * (1 - f) ** level))
            thr = np.sort(allw[alive])[::-1][k - 1]
            got = np.concatenate([new[n].numpy().ravel() for n in shapes])
            assert got.sum() == k
            assert (allw[got] >= thr).all() and (allw[alive & ~got] <= thr).all()
        for n in shapes:  # subset of the previous mask
            assert not (new[n] & ~masks[n]).any()
        masks = new
        total = sum(m.numel() for m in masks.values())
        assert abs(pruning.density(masks) * total - total * (1 - f) ** level) <= len(shapes)


def test_prune_remaining_counts():
    w = {"a": torch.randn(100), "b": torch.randn(50)}
    m = pruning.full_masks(w)
    m = pruning.prune_remaining(w, m, 0.2, "layerwise")
    assert int(m["a"].sum()) == 80 and int(m["b"].sum()) == 40
    m = pruning.prune_remaining(w, m, 0.5, "global")
    assert int(m["a"].sum()) + int(m["b"].sum()) == 60


def test_random_masks_same_density():
    w = {"a": torch.randn(30, 20), "b": torch.randn(10)}
    m = pruning.magnitude_prune(w, pruning.full_masks(w), 0.3, "global")
    r = pruning.random_masks_like(m, torch.Generator().manual_seed(1))
    for n in m:
        assert int(r[n].sum()) == int(m[n].sum())
    assert not torch.equal(r["a"], m["a"])
    rep = pruning.sparsity_report(r)
    assert rep["total"]["kept"] == int(m["a"].sum() + m["b"].sum())
    assert rep["layers"]["b"]["density"] == pytest.approx(int(m["b"].sum()) / 10)


def test_selection_weights_only_and_output():
    net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    names = [p.name for p in pruning.prunable_weights(net)]
    assert names == ["0.weight", "4.weight", "6.weight"]
    names = [p.name for p in pruning.prunable_weights(net, include_output=False)]
    assert names == ["0.weight", "4.weight"]
    assert pruning.output_layer_name(net) == "6"


def test_masked_step_keeps_zeros_under_momentum_and_decay():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    m = torch.rand(4, 6) > 0.5
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    pruning.apply_masks_([lin.weight], [m])
    for _ in range(5):
        opt.zero_grad()
        lin(torch.randn(8, 6)).pow(2).sum().backward()
        pruning.mask_grads_([lin.weight], [m])
        opt.step()
        assert (lin.weight[~m] == 0).all()
        assert (opt.state[lin.weight]["momentum_buffer"][~m] == 0).all()


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm1d(c), nn.Conv1d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv(torch.relu(self.bn(x)))


def _conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), _Res(6), nn.BatchNorm1d(6), nn.ReLU(),
                         nn.Conv1d(6, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(16, 10), nn.Sigmoid(),
                         nn.Linear(10, 3))


@pytest.mark.numeric
@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_structured_export_matches_masked(kind, scope):
    torch.manual_seed(0)
    if kind == "mlp":
        net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 3))
        x, out = torch.randn(7, 5), "4"
    else:
        net, x, out = _conv_net(), torch.randn(7, 1, 12), "11"
        net.train()
        net(x)  # non-trivial BatchNorm running stats
    net.eval()
    groups = pruning.channel_groups(net, x[:1], out)
    if kind == "conv":
        # the residual group couples the stem conv, both BatchNorms and the block's conv output
        res = next(g for g in groups if g.root == "0")
        touched = {n for n, *_ in res.slices}
        assert {"0.weight", "1.bn.weight", "1.conv.weight", "2.weight", "4.weight"} <= touched
    params = dict(net.named_parameters())
    if kind == "mlp":
        # independent RMS norm of hidden neuron j of layer 0: its row, bias and next column
        w0, b0, w2 = net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach()
        rms0 = ((w0.pow(2).sum(1) + b0.pow(2) + w2.pow(2).sum(0)) / (5 + 1 + 9)).sqrt()
        torch.testing.assert_close(pruning.channel_scores(groups, params)["0"], rms0.double())
    keep = {g.root: torch.ones(g.size, dtype=torch.bool) for g in groups}
    keep = pruning.prune_channels(groups, params, keep, 0.5, scope)
    if kind == "mlp" and scope == "layerwise":
        assert rms0[keep["0"]].min() >= rms0[~keep["0"]].max()
    masks = pruning.group_masks(groups, params, keep)
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    small = pruning.export_pruned(net, x[:1], keep)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    if scope == "layerwise":
        for g in groups:
            assert int(keep[g.root].sum()) == round(g.size * 0.5)
    torch.testing.assert_close(small(x), net(x), rtol=1e-5, atol=1e-6)


def _ticket(net: nn.Module) -> pruning.Ticket:
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    w = {n: p.detach() for n, p in net.named_parameters() if n.endswith("weight")}
    masks = pruning.magnitude_prune(w, pruning.full_masks(w), 0.3, "layerwise")
    return pruning.Ticket(masks=masks, rewind_state=state)


def test_ticket_starts():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 4))
    t = _ticket(net)
    fresh = pruning.fresh_init_state(net, seed=3)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 4))
    masks = pruning.start_from_ticket(model, t, "ticket")
    for n, m in t.masks.items():
        assert torch.equal(dict(model.named_parameters())[n], t.rewind_state[n] * m)
    assert torch.equal(model[0].bias, t.rewind_state["0.bias"])
    masks = pruning.start_from_ticket(model, t, "random_reinit", seed=3)
    assert torch.equal(model[0].weight, fresh["0.weight"] * t.masks["0.weight"])
    assert not torch.equal(model[0].weight, t.rewind_state["0.weight"] * t.masks["0.weight"])
    masks = pruning.start_from_ticket(model, t, "random_mask", seed=1)
    for n in t.masks:
        assert int(masks[n].sum()) == int(t.masks[n].sum()) and not torch.equal(masks[n], t.masks[n])
    assert torch.equal(model[0].weight, t.rewind_state["0.weight"] * masks["0.weight"])
    assert pruning.start_from_ticket(model, t, "perturb_rest", seed=3) is None
    m = t.masks["0.weight"]
    assert torch.equal(model[0].weight[m], t.rewind_state["0.weight"][m])
    assert torch.equal(model[0].weight[~m], fresh["0.weight"][~m])
    pruning.start_from_ticket(model, t, "perturb_rest", sigma=0.5, seed=3)
    w0 = t.rewind_state["0.weight"]
    diff = (model[0].weight - w0)[~m]
    assert torch.equal(model[0].weight[m], w0[m])
    assert float(diff.std()) == pytest.approx(0.5 * float(w0.std()), rel=0.1)


def test_ticket_mismatch_refused():
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 4))
    t = _ticket(net)
    with pytest.raises(ConfigError, match="shape"):
        pruning.check_ticket(t, nn.Sequential(nn.Linear(20, 31), nn.ReLU(), nn.Linear(31, 4)))
    with pytest.raises(ConfigError, match="does not have"):
        pruning.check_ticket(t, nn.Sequential(nn.Linear(20, 30)))
    with pytest.raises(ConfigError, match="mode"):
        pruning.start_from_ticket(net, t, "lucky")


@pytest.mark.numeric
@pytest.mark.parametrize("family", ["CNN", "ResNet18"])
def test_structured_export_on_framework_families(family):
    """Coupled groups of the BatchNorm CNN and the pre-activation ResNet18 (residual sums)."""
    import overparam_lit.models as models

    torch.manual_seed(0)
    net = getattr(models, family)(width=4, input_shape=(1, 40), num_classes=10).net
    x = torch.randn(6, 1, 40)
    net.train()
    net(x)
    net.eval()
    out = pruning.output_layer_name(net)
    groups = pruning.channel_groups(net, x[:1], out)
    params = dict(net.named_parameters())
    keep = {g.root: torch.ones(g.size, dtype=torch.bool) for g in groups}
    keep = pruning.prune_channels(groups, params, keep, 0.5, "global")
    with torch.no_grad():
        for n, m in pruning.group_masks(groups, params, keep).items():
            params[n].mul_(m)
    small = pruning.export_pruned(net, x[:1], keep)
    kept = sum(int(k.sum()) for k in keep.values())
    target = round(sum(g.size for g in groups) * 0.5)  # plus one channel for an emptied group
    assert target <= kept <= target + len(groups) and all(k.any() for k in keep.values())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(small(x), net(x), rtol=1e-5, atol=1e-6)

"""Plane banks, label maps and region metrics checked against hand-made planes and maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from overparam_lit.regions import (
    PlaneBank,
    agreement,
    anchor_consistency,
    boundary_fraction,
    choose_anchors,
    cohen_kappa,
    fragmentation,
    input_plane_bank,
    label_maps,
    make_plane_bank,
    plane_through,
    region_counts,
)
from overparam_lit.utils import ConfigError


def _data(n: int = 60, shape: tuple[int, ...] = (1, 8), classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y_true = torch.arange(n) % classes
    y = y_true.clone()
    y[::7] = (y_true[::7] + 1) % classes  # some mislabelled samples
    return x, y, y_true


def test_planes_pass_through_their_anchors_exactly():
    x, y, yt = _data()
    bank = make_plane_bank(x, y, yt, num_planes=6, resolution=9, policy="random", seed=3)
    for p in range(bank.num_planes):
        anchors = x[bank.anchor_ids[p]].to(torch.float64)
        back = bank.points(p, bank.anchor_coords[p])
        torch.testing.assert_close(back, anchors, rtol=0, atol=1e-12)
        e = bank.basis[p]
        torch.testing.assert_close(e @ e.T, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-14)
        u0, u1, v0, v1 = bank.bounds[p].tolist()
        for u, v in bank.anchor_coords[p].tolist():
            assert u0 < u < u1 and v0 < v < v1
    # the map's own anchor predictions are the model's predictions on the samples themselves
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    maps = label_maps(net, bank)
    with torch.no_grad():
        direct = net(x[bank.anchor_ids.reshape(-1)]).argmax(1).reshape(-1, 3)
    np.testing.assert_array_equal(maps.anchor_pred, direct.numpy())


def test_grid_corners_and_layout():
    x0, x1, x2 = torch.zeros(3), torch.tensor([2.0, 0, 0]), torch.tensor([0.0, 1.0, 0])
    origin, basis, coords = plane_through(x0, x1, x2)
    torch.testing.assert_close(coords, torch.tensor([[0.0, 0], [2, 0], [0, 1]], dtype=torch.float64))
    bank = make_plane_bank(torch.stack([x0, x1, x2]), torch.arange(3), torch.arange(3),
                           resolution=5, margin=0.5, anchor_ids=torch.tensor([[0, 1, 2]]))
    # extent 2 -> pad 1 on every side: u in [-1, 3], v in [-1, 2]
    torch.testing.assert_close(bank.bounds[0], torch.tensor([-1.0, 3, -1, 2], dtype=torch.float64))
    g = bank.grid(0).reshape(5, 5, 3)
    assert g[0, 0].tolist() == [-1.0, -1.0, 0.0]  # row = v, column = u
    assert g[0, 4].tolist() == [3.0, -1.0, 0.0]
    assert g[4, 0].tolist() == [-1.0, 2.0, 0.0]


def test_linear_three_class_model_gives_exactly_three_regions():
    # plane z = 0.5 of R^3 through (0,0,.5), (1,0,.5), (0,1,.5): coordinates (u, v) = (x, y)
    pts = torch.tensor([[0.0, 0.0, 0.5], [1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    bank = make_plane_bank(pts, torch.arange(3), torch.arange(3), resolution=101, margin=0.5,
                           anchor_ids=torch.tensor([[0, 1, 2]]))
    # three classes whose scores are linear; the regions are three wedges meeting at c
    angles = [0.0, 2 * math.pi / 3, 4 * math.pi / 3]
    w = torch.tensor([[math.cos(a), math.sin(a), 0.7] for a in angles])
    c = (0.3333, 0.2777)
    b = -(w[:, :2] @ torch.tensor(c)) - 0.7 * 0.5
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    maps = label_maps(lin, bank, batch_size=777)  # a batch size that splits rows
    # independent map: numpy on the analytic plane
    u, v = np.linspace(-0.5, 1.5, 101), np.linspace(-0.5, 1.5, 101)
    vv, uu = np.meshgrid(v, u, indexing="ij")
    scores = (uu[..., None] - c[0]) * np.cos(angles) + (vv[..., None] - c[1]) * np.sin(angles)
    expected = scores.argmax(-1)
    # no grid point is within float32 rounding of a boundary, so float32 and float64 agree
    top2 = np.sort(scores, -1)
    assert (top2[..., -1] - top2[..., -2]).min() > 1e-4
    np.testing.assert_array_equal(maps.pred[0], expected)
    frag = fragmentation(maps.pred, 3)
    assert frag.counts.tolist() == [[1, 1, 1]]
    assert frag.raw.tolist() == [3.0] and frag.normalised.tolist() == [1.0]


def test_eight_connectivity_and_min_region_size():
    m = np.array([[0, 1, 0, 0],
                  [1, 0, 0, 0],
                  [0, 0, 0, 1],
                  [0, 0, 0, 0]])
    # class 1: the two diagonal neighbours top-left form one region; the lone pixel another
    assert region_counts(m, 2).tolist() == [[1, 2]]
    # 4-connectivity would split the 0s at the top-left corner; 8-connectivity does not
    assert region_counts(m, 2, min_region_size=2).tolist() == [[1, 1]]
    assert region_counts(m, 2, min_region_size=3).tolist() == [[1, 0]]
    f = fragmentation(np.stack([m, np.zeros_like(m)]), 3)
    assert f.raw.tolist() == [3.0, 1.0]
    assert f.normalised.tolist() == [1.5, 1.0]
    assert f.per_class[0] == 1.0 and f.per_class[1] == 2.0 and np.isnan(f.per_class[2])


def test_agreement_kappa_by_hand():
    a = np.array([0, 0, 1, 1])
    b = np.array([0, 1, 1, 1])
    assert agreement(a, b) == 0.75
    # p_o = .75, p_e = .5 * .25 + .5 * .75 = .5
    assert cohen_kappa(a, b, 2) == pytest.approx(0.5, abs=1e-15)
    x, y, yt = _data()
    bank = make_plane_bank(x, y, yt, num_planes=3, resolution=16, seed=1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    m = label_maps(net, bank).pred
    assert agreement(m, m) == 1.0
    assert cohen_kappa(m, m, 3) == 1.0
    assert cohen_kappa(np.zeros(5), np.zeros(5), 3) == 1.0  # one class everywhere


def test_boundary_fraction_and_anchor_consistency():
    m = np.zeros((8, 8), dtype=int)
    m[:, 4:] = 1
    assert boundary_fraction(m) == 16 / 64  # columns 3 and 4
    assert boundary_fraction(np.zeros((4, 4))) == 0.0
    assert anchor_consistency(np.array([[0, 1, 2]]), np.array([[0, 1, 1]])) == pytest.approx(2 / 3)


def test_reloaded_bank_reproduces_grid_bit_for_bit(tmp_path):
    x, y, yt = _data()
    bank = make_plane_bank(x, y, yt, num_planes=4, resolution=12, policy="mislabelled", seed=5)
    path = bank.save(tmp_path / "bank.pt")
    torch.load(path, weights_only=True)  # plain contents only
    again = PlaneBank.load(path)
    for p in range(bank.num_planes):
        assert torch.equal(bank.grid(p), again.grid(p))
    assert again.input_shape == (1, 8) and again.policy == "mislabelled"
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    a, b = label_maps(net, bank), label_maps(net, again)
    for k, v in a.arrays().items():
        np.testing.assert_array_equal(v, b.arrays()[k])
    # same data, same seed -> the same bank, so sweeps can also regenerate it
    rebuilt = make_plane_bank(x, y, yt, num_planes=4, resolution=12, policy="mislabelled", seed=5)
    assert torch.equal(rebuilt.origin, bank.origin) and torch.equal(rebuilt.basis, bank.basis)


def test_anchor_policies():
    x, y, yt = _data(n=90)
    for policy in ("random", "distinct_classes", "same_class", "mislabelled"):
        ids = choose_anchors(y, yt, 20, policy, seed=2)
        assert ids.shape == (20, 3)
        assert all(len(set(r)) == 3 for r in ids.tolist())
        if policy == "distinct_classes":
            assert all(len(set(yt[r].tolist())) == 3 for r in ids)
        if policy == "same_class":
            assert all(len(set(yt[r].tolist())) == 1 for r in ids)
        if policy == "mislabelled":
            assert bool((y[ids[:, 0]] != yt[ids[:, 0]]).all())
    with pytest.raises(ConfigError, match="mislabelled"):
        choose_anchors(yt, yt, 2, "mislabelled")


@pytest.mark.numeric
def test_label_maps_eval_mode_no_grad_and_restore():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, 3))
    net.train()
    net(torch.randn(64, 1, 8))  # running statistics differ from any batch's own
    x, y, yt = _data()
    bank = make_plane_bank(x, y, yt, num_planes=2, resolution=8, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    maps = label_maps(net, bank, batch_size=10)
    assert net.training and all(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats untouched
    net.eval()
    with torch.no_grad():
        grid = torch.cat([bank.grid(p) for p in range(2)]).float()
        out = net(grid)
    np.testing.assert_array_equal(maps.pred.reshape(-1), out.argmax(1).numpy())
    prob = out.softmax(1).topk(2, 1).values
    np.testing.assert_allclose(maps.confidence.reshape(-1), prob[:, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(maps.margin.reshape(-1), (prob[:, 0] - prob[:, 1]).numpy(),
                               rtol=1e-5, atol=1e-7)


def test_input_plane_bank_is_the_input_space():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    bank = input_plane_bank(x, torch.zeros(200, dtype=torch.long), resolution=7, margin=0.1)
    grid = bank.grid(0)
    coords = bank.grid_coords(0)
    assert torch.equal(grid, coords)
    u0, u1, v0, v1 = bank.bounds[0].tolist()
    assert u0 < x[:, 0].min() and x[:, 0].max() < u1 and v0 < x[:, 1].min() and x[:, 1].max() < v1


def test_bad_input_is_refused():
    x, y, yt = _data()
    with pytest.raises(ConfigError, match="resolution must be an integer >= 2"):
        make_plane_bank(x, y, yt, resolution=1)
    with pytest.raises(ConfigError, match="coincide"):
        plane_through(x[0], x[0], x[1])
    with pytest.raises(ConfigError, match="coincide"):
        plane_through(x[0], x[1], x[1])
    with pytest.raises(ConfigError, match="collinear"):
        plane_through(x[0], x[1], 3 * x[1] - 2 * x[0])
    dup = torch.stack([x[0], x[1], x[0] + 0.5 * (x[1] - x[0])])
    with pytest.raises(ConfigError, match="collinear"):
        make_plane_bank(dup, y[:3], yt[:3], anchor_ids=torch.tensor([[0, 1, 2]]))
    bank = make_plane_bank(x, y, yt, num_planes=2, resolution=4)
    with pytest.raises(ConfigError, match=r"shape \(1, 8\)"):
        bank.check_input_shape((1, 40))
    with pytest.raises(ConfigError, match="2-D inputs"):
        input_plane_bank(x.reshape(60, 8))

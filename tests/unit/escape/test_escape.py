"""Escape-dimension toolkit: widening preserves the function; duplicate widening at a critical point
gives a line of critical points whose splitting curvature matches the closed form of Fukumizu & Amari
(2000); unit choice, split directions and resizing are exact; success statistics match hand
computations and scipy."""

from __future__ import annotations

import copy

import pytest
import torch
from tolerances import tol
from torch import nn

from overparam_lit.curvature import HessianOperator, lanczos
from overparam_lit.escape import (
    add_units,
    choose_units,
    growth,
    hidden_layers,
    hidden_sizes,
    make_teacher_data,
    multistart_prediction,
    nudge_,
    random_direction,
    relative_losses,
    resize_to,
    split_direction,
    success_interval,
    success_rates,
    widen,
    widen_layers,
)
from overparam_lit.escape.critical import polish_to_critical_point
from overparam_lit.models import CNN, MLP
from overparam_lit.utils import ConfigError

MSE = nn.functional.mse_loss


def _mlp(width: int, depth: int = 1, act: str = "relu", d: int = 2, out: int = 1) -> MLP:
    return MLP(width=width, depth=depth, activation=act, input_shape=(d,), num_classes=out,
               task="regression")


# ---- success statistics ----------------------------------------------------------------------
def test_success_interval_wilson() -> None:
    p, lo, hi = success_interval(10, 50)
    assert p == 0.2
    # Wilson 95% interval for 10/50 (closed form)
    assert lo == pytest.approx(0.1124, abs=1e-3) and hi == pytest.approx(0.3304, abs=1e-3)
    assert success_interval(0, 50)[1] == 0.0 and success_interval(50, 50)[2] == 1.0


@pytest.mark.parametrize(("k", "n", "conf"), [(0, 50, 0.95), (10, 50, 0.95), (37, 40, 0.9), (5, 5, 0.99),
                                              (1, 3, 0.68)])
def test_success_interval_equals_scipy_wilson(k: int, n: int, conf: float) -> None:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    p, lo, hi = success_interval(k, n, conf)
    assert p == k / n
    assert lo == pytest.approx(float(ci.low), abs=1e-12) and hi == pytest.approx(float(ci.high), abs=1e-12)


def test_success_rates_count_by_width() -> None:
    rows = [  # strings, as members.csv gives them; 6 < 7 and nan fail at threshold 0.01
        {"width": "4", "seed": "0", "relative_loss": "0.002"},
        {"width": "4", "seed": "1", "relative_loss": "0.5"},
        {"width": "4", "seed": "2", "relative_loss": "nan"},
        {"width": "4", "seed": "3", "relative_loss": "0.0099"},
        {"width": "8", "seed": "0", "relative_loss": 1e-5},
        {"width": "8", "seed": "1", "relative_loss": 0.01},  # not below the threshold
        {"width": "16", "seed": "0", "relative_loss": 0.0},
    ]
    out = success_rates(rows, threshold=0.01)
    assert [(r["width"], r["successes"], r["trials"]) for r in out] == [(4, 2, 4), (8, 1, 2), (16, 1, 1)]
    for r in out:
        assert (r["rate"], r["low"], r["high"]) == success_interval(r["successes"], r["trials"])
    by_seed = success_rates(rows, threshold=0.01, by="seed")
    assert [(r["seed"], r["successes"], r["trials"]) for r in by_seed] == [(0, 3, 3), (1, 0, 2), (2, 0, 1),
                                                                          (3, 1, 1)]
    with pytest.raises(ConfigError, match="appears twice"):
        success_rates(rows + [rows[0]], threshold=0.01)
    with pytest.raises(ConfigError, match="lacks the columns"):
        success_rates([{"width": 4, "seed": 0, "train/loss": 0.1}], threshold=0.01)
    torch.testing.assert_close(relative_losses(torch.tensor([0.2, 0.4]), 0.4), torch.tensor([0.5, 1.0]))


def test_multistart_prediction_by_hand() -> None:
    # width 6, r* = 4: C(6, 4) = 15 subnetworks; p = 0.2 -> 1 - 0.8^15
    got = multistart_prediction(0.2, 6, 4, interval=(0.1, 0.35))
    assert got["subnetworks"] == 15 and got["width"] == 6 and got["r_star"] == 4
    assert got["prediction"] == pytest.approx(1 - 0.8**15, rel=1e-12)
    assert got["low"] == pytest.approx(1 - 0.9**15, rel=1e-12)
    assert got["high"] == pytest.approx(1 - 0.65**15, rel=1e-12)
    assert got["low"] <= got["prediction"] <= got["high"]
    same = multistart_prediction(0.3, 4, 4)  # n = r*: one subnetwork, the rate itself
    assert same["prediction"] == pytest.approx(0.3) and same["low"] is None
    assert multistart_prediction(0.0, 10, 4)["prediction"] == 0.0
    assert multistart_prediction(1.0, 10, 4)["prediction"] == 1.0
    tiny = multistart_prediction(1e-12, 5, 4)  # no cancellation: 5 * 1e-12
    assert tiny["prediction"] == pytest.approx(5e-12, rel=1e-9)
    huge = multistart_prediction(1e-3, 2000, 1000)  # C(2000, 1000) overflows a float
    assert huge["prediction"] == 1.0
    with pytest.raises(ConfigError, match="n must be an integer >= r_star"):
        multistart_prediction(0.2, 3, 4)
    with pytest.raises(ConfigError, match="low <= p <= high"):
        multistart_prediction(0.2, 6, 4, interval=(0.3, 0.4))


# ---- widening ---------------------------------------------------------------------------------
@pytest.mark.numeric
@pytest.mark.parametrize("method", ["zero", "duplicate"])
def test_widen_mlp_preserves_outputs(method: str) -> None:
    torch.manual_seed(0)
    model = _mlp(5, depth=3, d=3, out=2)
    x = torch.randn(64, 3)
    before = model(x).detach()
    widen(model, 9, method, ratio=0.3, generator=torch.Generator().manual_seed(1))
    assert model.width == 9 and [h.size for h in hidden_layers(model.net)] == [9, 9, 9]
    assert model.num_params == _mlp(9, depth=3, d=3, out=2).num_params
    assert model.hparams["width"] == 9
    # float32: the wide net adds split and zero units into sums of 9 terms, 3 layers deep; rounding
    # relative to the outputs' scale: tol(float32, 9 * 3, scale) ~ 6e-6 * scale. Measured 6e-8; a
    # widening that changes the function moves outputs by O(scale)
    atol = tol(torch.float32, 9 * 3, float(before.abs().max()))
    torch.testing.assert_close(model(x).detach(), before, atol=atol, rtol=0)


@pytest.mark.numeric
@pytest.mark.parametrize("method", ["zero", "duplicate"])
@pytest.mark.parametrize("shape", [(1, 20), (3, 8, 8)])
def test_widen_cnn_channels_preserves_outputs(method: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = CNN(width=2, input_shape=shape, num_classes=3)
    x = torch.randn(6, *shape)
    model.train()
    model(x)  # move BatchNorm running statistics away from their defaults
    for train_mode in (False, True):
        m = copy.deepcopy(model).train(train_mode)
        before = m(x).detach()
        widen(m, 3, method)
        assert [h.size for h in hidden_layers(m.net)] == [3, 6, 12, 24]
        # float32 through 4 conv-BN blocks: the largest sums are BatchNorm's statistics over
        # 6 samples x 64 positions (8x8) and the 3x3 convs over 24 channels; tol(float32, 6 * 64, scale)
        # ~ 2.3e-5 * scale. Measured up to 6e-7 (60% of the old absolute 1e-6); a widening that
        # changes the function moves outputs by O(scale)
        atol = tol(torch.float32, 6 * 64, float(before.abs().max()))
        torch.testing.assert_close(m(x).detach(), before, atol=atol, rtol=0)


def test_growth_in_proportion_or_one_layer() -> None:
    cnn = CNN(width=2, input_shape=(1, 20), num_classes=3)
    assert growth(cnn.net, 1, width=2) == [1, 2, 4, 8]
    assert growth(cnn.net, 3, layer=2) == [0, 0, 3, 0]
    assert growth(_mlp(4, depth=2).net, 2) == [2, 2]
    with pytest.raises(ConfigError, match="cannot grow in proportion"):
        growth(CNN(width=2, input_shape=(1, 20), num_classes=3).net, 1, width=4)  # 2 * 1 / 4
    with pytest.raises(ConfigError, match="hidden layer index out of range"):
        growth(_mlp(4).net, 1, layer=1)


def test_choose_units_by_rule() -> None:
    net = _mlp(4, out=2).net
    with torch.no_grad():
        net[3].weight.copy_(torch.tensor([[0.1, -3.0, 0.5, 2.0], [0.0, 0.0, -0.5, 2.0]]))
    # outgoing norms: 0.1, 3.0, 0.707, 2.83 -> largest first: 1, 3, 2, 0, then again
    assert choose_units(net, 0, 6, "largest") == [1, 3, 2, 0, 1, 3]
    drawn = choose_units(net, 0, 4, "random", torch.Generator().manual_seed(5))
    assert sorted(drawn) == [0, 1, 2, 3]
    assert drawn == torch.randperm(4, generator=torch.Generator().manual_seed(5)).tolist()
    assert choose_units(net, 0, 3, 2) == [2, 2, 2] and choose_units(net, 0, 2, [3, 0]) == [3, 0]
    with pytest.raises(ConfigError, match="unit index out of range"):
        choose_units(net, 0, 1, 4)
    with pytest.raises(ConfigError, match="source units"):
        choose_units(net, 0, 2, [1])


def test_repeated_splits_keep_the_function_and_split_direction_is_flat_to_first_order() -> None:
    torch.manual_seed(0)
    net = _mlp(3, depth=2, act="tanh", d=3, out=2).net.double()
    x = torch.randn(50, 3, dtype=torch.float64)
    both = widen_layers(net, [2, 1], "duplicate", ratio=0.3, unit="random")
    assert hidden_sizes(both.net) == [5, 4] and [len(s) for s in both.sources] == [2, 1]
    torch.testing.assert_close(both.net(x), net(x), atol=1e-12, rtol=0)
    res = widen_layers(net, [3, 0], "duplicate", ratio=0.3, unit=[1, 1, 0])
    assert hidden_sizes(res.net) == [6, 3] and res.sources == [[1, 1, 0], []]
    # unit 1 split twice: shares 0.3 * 0.3, copies 0.7 and 0.3 * 0.7; unit 0 once
    assert res.shares[0] == pytest.approx([0.3, 0.09, 1.0, 0.7, 0.21, 0.7])
    torch.testing.assert_close(res.net(x), net(x), atol=1e-12, rtol=0)
    d = split_direction(res, torch.Generator().manual_seed(1))
    params = dict(res.net.named_parameters())

    def out(t: float) -> torch.Tensor:
        moved = {n: p + t * d[n] for n, p in params.items()}
        return torch.func.functional_call(res.net, moved, (x,))

    zero, one = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    jvp = torch.func.jvp(out, (zero,), (one,))[1]
    assert float(jvp.abs().max()) < 1e-12  # the outputs do not move to first order
    assert float(sum(v.abs().sum() for v in d.values())) > 0
    moved = copy.deepcopy(res.net)
    norm = nudge_(moved, d, 1e-3)
    pairs = zip(moved.parameters(), res.net.parameters(), strict=True)
    step = torch.cat([(a - b).reshape(-1) for a, b in pairs])
    assert norm > 0 and float(step.norm()) == pytest.approx(1e-3, rel=1e-9)
    r = random_direction(res.net, torch.Generator().manual_seed(2))
    assert set(r) == set(params) and all(r[n].shape == p.shape for n, p in params.items())


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_resize_to_rebuilds_a_widened_network(family: str) -> None:
    torch.manual_seed(0)
    net = (_mlp(3, depth=2).net if family == "mlp"
           else CNN(width=2, input_shape=(1, 20), num_classes=3).net)
    wide = widen_layers(net, growth(net, 2), "duplicate").net
    x = torch.randn(4, 2) if family == "mlp" else torch.randn(4, 1, 20)
    state = wide.state_dict()
    rebuilt = resize_to(net, {n: t.shape for n, t in state.items()})
    rebuilt.load_state_dict(state)
    wide.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), wide(x), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="narrower"):
        resize_to(wide, {n: t.shape for n, t in net.state_dict().items()})


def test_widen_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="new width"):
        widen(_mlp(4), 3)
    with pytest.raises(ConfigError, match="unknown widening method"):
        add_units(_mlp(4).net, 0, 1, "noise")
    with pytest.raises(ConfigError, match="hidden layer index"):
        add_units(_mlp(4).net, 1, 1)


# ---- the line of critical points ------------------------------------------------------------
def _critical_point(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Train to a critical point in float64: L-BFGS, then Newton steps on the exact Hessian."""
    return polish_to_critical_point(net, x, y, lbfgs_rounds=4, newton_steps=8, max_iter=500,
                                    tolerance_grad=1e-12)


def _grad_norm(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.zero_grad()
    MSE(net(x), y).backward()
    return float(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).norm())


def test_duplicate_widening_gives_a_line_of_critical_points() -> None:
    torch.set_default_dtype(torch.float64)
    try:
        data = make_teacher_data(2, 3, "tanh", n_train=80, n_test=8, data_seed=2)
        x, y = data.x_train.double(), data.y_train.double()
        torch.manual_seed(0)
        student = _critical_point(_mlp(2, act="tanh").net.double(), x, y)
        loss0 = float(MSE(student(x), y))
        assert _grad_norm(student, x, y) < 1e-10
        assert loss0 / data.target_variance > 1e-5  # a narrow student cannot fit: residual is nonzero
        j = 0
        w, b = student[1].weight[j].detach(), student[1].bias[j].detach()
        a = float(student[3].weight[0, j])
        residual = (student(x) - y).detach().reshape(-1)
        xt = torch.cat([x, torch.ones(len(x), 1)], 1)
        pre = x @ w + b
        sigma2 = -2 * torch.tanh(pre) * (1 - torch.tanh(pre) ** 2)  # tanh''
        split_matrix = (residual * sigma2 * 1.0).unsqueeze(1).unsqueeze(2) * xt.unsqueeze(2) * xt.unsqueeze(1)
        split_matrix = split_matrix.mean(0)  # S_j = E[r tanh''(w.x+b) x~ x~^T]
        u = torch.tensor([0.6, -0.3, 0.5])
        for ratio in (-0.5, 0.2, 0.5, 1.0, 1.7):
            wide = add_units(student, 0, 1, "duplicate", ratio=ratio, sources=[j])
            assert float(MSE(wide(x), y)) == pytest.approx(loss0, rel=1e-12, abs=1e-15)
            assert _grad_norm(wide, x, y) < 1e-9
            # curvature along the direction that separates the two copies (closed form)
            op = HessianOperator(wide, MSE, x, y, dtype=torch.float64)
            v = {n: torch.zeros_like(p) for n, p in wide.named_parameters()}
            v["1.weight"][j] = (1 - ratio) * u[:2]
            v["1.bias"][j] = (1 - ratio) * u[2]
            v["1.weight"][2] = -ratio * u[:2]
            v["1.bias"][2] = -ratio * u[2]
            flat = op.flatten(v)
            measured = float(flat @ op.matvec(flat))
            expected = 2 * ratio * (1 - ratio) * a * float(u @ split_matrix @ u)
            assert measured == pytest.approx(expected, rel=1e-6, abs=1e-12)
            # lambda_min from the curvature package agrees with the dense Hessian's
            dense = torch.linalg.eigvalsh(op.dense())
            lz = lanczos(op.matvec, op.dim, k=1, max_iters=op.dim, tol=0, dtype=torch.float64)
            assert float(lz.bottom[0]) == pytest.approx(float(dense[0]), abs=1e-8)
            if measured < 0:
                assert float(dense[0]) <= measured / float(flat @ flat) + 1e-10
    finally:
        torch.set_default_dtype(torch.float32)

"""Curvature package against exact dense Hessians (torch.autograd.functional.hessian)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from overparam_lit.curvature import (
    HessianOperator,
    count_outliers,
    hessian_spectrum,
    hutchinson_trace,
    lanczos,
    layer_subsets,
    slq,
)
from overparam_lit.utils import ConfigError

CE = nn.functional.cross_entropy
NEG_EPS = 1e-2  # the same threshold -NEG_EPS * lambda_max for SLQ and for the exact count


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 4)).double()


def cnn() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv1d(1, 4, 5, padding=2), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(4, 8, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool1d(4), nn.Flatten(),
        nn.Linear(32, 4),
    ).double()
    with torch.no_grad():  # non-trivial running statistics, used in eval mode
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    shape = (64, 8) if kind == "mlp" else (64, 1, 16)
    return torch.randn(*shape, generator=g, dtype=torch.float64), torch.randint(0, 4, (64,), generator=g)


def exact_hessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor, names=None) -> torch.Tensor:
    """Dense Hessian of the mean loss over ``names`` (default all), flattened in their order."""
    params = dict(net.named_parameters())
    names = list(params) if names is None else names
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    rest = {n: p.detach() for n, p in params.items() if n not in names}
    buffers = dict(net.named_buffers())

    def f(v: torch.Tensor) -> torch.Tensor:
        d, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = int(np.prod(s))
            d[n] = v[i : i + k].reshape(s)
            i += k
        return CE(torch.func.functional_call(net, {**rest, **buffers, **d}, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def case(request):
    net = mlp() if request.param == "mlp" else cnn()
    x, y = data(request.param)
    H = exact_hessian(net, x, y)
    ev = np.linalg.eigvalsh(H.numpy())
    return request.param, net, x, y, H, ev


@pytest.mark.numeric
@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("method", ["jvp", "double_backward", "auto"])
def test_hvp_matches_exact_and_chunks_are_sample_weighted(case, method, cache):
    _, net, x, y, H, _ = case
    # chunks of 20 leave a last chunk of 4 samples: only sample weighting gets this right
    op = HessianOperator(net, CE, x, y, chunk_size=20, method=method, dtype=torch.float64,
                         cache=cache)
    for seed in (3, 4):  # a second product reuses the cached linearisation or graph
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
        # float64, the same sums over 24 samples in other orders (chunks, jvp or double backward):
        # ~eps64 * sqrt(n_params) relative (1e-14); rtol 1e-10 leaves 1e4x, and atol 1e-12 covers
        # entries near zero of a vector of size ~1 (measured 3e-16)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert op.method == (method if method != "auto" else
                         ("double_backward" if cache else "jvp"))
    loss, g = op.loss_and_gradient()
    assert loss == pytest.approx(float(CE(net(x), y)), rel=1e-12)
    assert g.shape == (op.dim,)


@pytest.mark.numeric
def test_lanczos_top5_and_bottom5_within_1e4(case):
    _, net, x, y, _, ev = case
    op = HessianOperator(net, CE, x, y, dtype=torch.float64)
    res = lanczos(op, op.dim, k=5, max_iters=150, tol=1e-8, dtype=torch.float64)
    assert res.converged and res.num_matvecs < op.dim  # stopped early on the Ritz residuals
    exact_top, exact_bottom = ev[::-1][:5], ev[:5]
    assert np.all(np.abs(res.top - exact_top) <= 1e-4 * np.abs(exact_top))
    assert np.all(np.abs(res.bottom - exact_bottom) <= 1e-4 * np.abs(exact_bottom))
    assert exact_bottom[0] < 0  # the most negative eigenvalue really is negative


def test_lanczos_float32_lambda_max(case):
    _, net, x, y, _, ev = case
    op = HessianOperator(net.float(), CE, x.float(), y)  # the probe's default: float32
    try:
        res = lanczos(op, op.dim, k=5, max_iters=150, tol=1e-5)
    finally:
        net.double()
    assert abs(res.top[0] - ev[-1]) <= 1e-4 * abs(ev[-1])
    assert abs(res.bottom[0] - ev[0]) <= 1e-4 * abs(ev[0])
    # the float32 operator's measured noise keeps the bounds honest: the sign is proven
    assert res.sign_resolved and res.lambda_min_lower <= ev[0] <= res.lambda_min_bound < 0
    assert res.noise <= 1e-4 * abs(ev[-1])


def test_slq_negative_fraction_and_trace(case):
    _, net, x, y, H, ev = case
    exact = float((ev < -NEG_EPS * ev[-1]).mean())
    s = slq(lambda v: H @ v, H.shape[0], num_runs=40, num_iters=100, dtype=torch.float64,
            generator=torch.Generator().manual_seed(1))
    assert abs(s.negative_fraction(NEG_EPS, float(ev[-1])) - exact) <= 0.02
    np.testing.assert_allclose(s.weights.sum(axis=1), 1.0, rtol=1e-10)
    # SLQ start vectors give Hutchinson samples of the trace for free
    assert abs(s.trace - ev.sum()) <= 3 * s.trace_stderr
    # the smoothed density integrates to one
    sigma = 0.01 * (ev[-1] - ev[0])
    grid = np.linspace(ev[0] - 8 * sigma, ev[-1] + 8 * sigma, 4000)
    assert np.trapezoid(s.density(grid, sigma), grid) == pytest.approx(1.0, abs=1e-3)


def test_hutchinson_trace_through_the_operator(case):
    _, net, x, y, _, ev = case
    op = HessianOperator(net, CE, x, y, dtype=torch.float64)
    tr = hutchinson_trace(op, op.dim, num_samples=30, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(5))
    assert tr.stderr > 0
    assert abs(tr.trace - ev.sum()) <= 3 * tr.stderr


@pytest.mark.numeric
def test_spectrum_summary_through_the_operator():
    net, (x, y) = mlp(), data("mlp")
    ev = np.linalg.eigvalsh(exact_hessian(net, x, y).numpy())
    op = HessianOperator(net, CE, x, y, dtype=torch.float64)
    s = hessian_spectrum(op, op.dim, k=5, lanczos_iters=150, tol=1e-8, slq_runs=3,
                         slq_iters=20, dtype=torch.float64)
    assert s.lambda_max == pytest.approx(ev[-1], rel=1e-6)
    assert s.lambda_min == pytest.approx(ev[0], rel=1e-6)
    assert s.num_hvps == op.num_hvps == s.lanczos.num_matvecs + 3 * 20
    assert s.lambda_min_resolved and s.lambda_min_converged and s.lambda_max_converged
    assert s.lambda_min_lower <= ev[0] <= s.lambda_min_bound < 0
    assert s.num_hvps_top <= s.num_hvps_bottom == s.lanczos.num_matvecs and s.num_hvps_slq == 60
    keys = s.scalars()
    assert {"hessian/lambda_max", "hessian/top_k/4", "hessian/num_hvps", "hessian/lambda_min_bound",
            "hessian/lambda_min_resolved", "hessian/num_hvps_bottom"} <= set(keys)


@pytest.mark.numeric
def test_masked_and_per_layer_subsets_are_exact_sub_blocks():
    net, (x, y) = mlp(), data("mlp")
    groups = layer_subsets(net)
    assert groups == {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"],
                      "4": ["4.weight", "4.bias"]}
    names = groups["2"]
    H = exact_hessian(net, x, y, names)
    op = HessianOperator(net, CE, x, y, params=names, dtype=torch.float64)
    torch.testing.assert_close(op.dense(), H, rtol=1e-10, atol=1e-12)
    mask = (torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.7).double()
    op = HessianOperator(net, CE, x, y, params=names, masks={"2.weight": mask},
                         dtype=torch.float64)
    keep = torch.cat([mask.reshape(-1) != 0, torch.ones(16, dtype=torch.bool)])
    assert op.dim == int(keep.sum())
    torch.testing.assert_close(op.dense(), H[keep][:, keep], rtol=1e-10, atol=1e-12)
    # torch.nn.utils.prune masks are found without being passed
    pruned = mlp()
    prune.custom_from_mask(pruned[2], "weight", mask)
    op = HessianOperator(pruned, CE, x, y, params=["2.weight_orig", "2.bias"],
                         dtype=torch.float64)
    assert op.dim == int(keep.sum())
    masked = mlp()  # the same point: pruned weights are zero
    with torch.no_grad():
        masked[2].weight.mul_(mask)
    H = exact_hessian(masked, x, y, names)
    torch.testing.assert_close(op.dense(), H[keep][:, keep], rtol=1e-10, atol=1e-12)


def test_operator_never_touches_grad_or_params():
    net, (x, y) = mlp(), data("mlp")
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for method, cache in (("jvp", True), ("jvp", False), ("double_backward", True)):
        op = HessianOperator(net, CE, x, y, method=method, dtype=torch.float64, cache=cache)
        op.matvec(torch.ones(op.dim, dtype=torch.float64))
        op.loss_and_gradient()
    for n, p in net.named_parameters():
        assert p.grad is None
        assert torch.equal(p, before[n])


def test_train_mode_batchnorm_buffers_untouched():
    net, (x, y) = cnn(), data("cnn")
    net.train()
    before = {n: b.clone() for n, b in net.named_buffers()}
    op = HessianOperator(net, CE, x, y, dtype=torch.float64)
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    for n, b in net.named_buffers():
        assert torch.equal(b, before[n]), n


def test_bad_input_is_refused():
    net, (x, y) = mlp(), data("mlp")
    op = HessianOperator(net, CE, x, y, dtype=torch.float64)
    with pytest.raises(ConfigError, match="k must be between 1 and the number of parameters"):
        lanczos(op, op.dim, k=op.dim + 1)
    with pytest.raises(ConfigError, match="exceeds the number of parameters"):
        hessian_spectrum(op, op.dim, k=op.dim + 1)
    with pytest.raises(ConfigError, match="probe set is empty"):
        HessianOperator(net, CE, x[:0], y[:0])
    with pytest.raises(ConfigError, match="scalar mean"):
        HessianOperator(net, lambda o, t: CE(o, t, reduction="none"), x, y)
    with pytest.raises(ConfigError, match="unknown parameter names"):
        HessianOperator(net, CE, x, y, params=["nope.weight"])
    with pytest.raises(ConfigError, match="unknown HVP method"):
        HessianOperator(net, CE, x, y, method="finite_differences")


def test_count_outliers():
    assert count_outliers(np.r_[50.0, 40.0, 30.0, 1.0, 0.9, 0.8, -0.2]) == 3
    assert count_outliers(np.r_[5.0]) == 1

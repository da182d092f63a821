"""Escape-dimension toolkit: seed ensembles equal separate runs; widening preserves the function;
duplicate widening at a critical point gives a line of critical points whose splitting curvature
matches the closed form of Fukumizu & Amari (2000)."""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch
from torch import nn

from overparam_lit.curvature import HessianOperator, lanczos
from overparam_lit.data import TeacherStudent
from overparam_lit.escape import (
    StackedEnsemble,
    add_units,
    hidden_layers,
    make_teacher_data,
    seed_nets,
    success_interval,
    widen,
)
from overparam_lit.escape.critical import polish_to_critical_point
from overparam_lit.escape.ensemble import fit_ensemble
from overparam_lit.models import CNN, MLP
from overparam_lit.models.ensemble import SeedEnsemble
from overparam_lit.utils import ConfigError

MSE = nn.functional.mse_loss


def _mlp(width: int, depth: int = 1, act: str = "relu", d: int = 2, out: int = 1) -> MLP:
    return MLP(width=width, depth=depth, activation=act, input_shape=(d,), num_classes=out,
               task="regression")


# ---- seed ensembles ---------------------------------------------------------------------------
def test_stacked_forward_matches_members() -> None:
    nets = seed_nets(lambda: _mlp(6, depth=2).net, [3, 4, 5])
    ens = StackedEnsemble(nets)
    x = torch.randn(3, 17, 2)
    ref = torch.stack([n(x[i]) for i, n in enumerate(nets)])
    torch.testing.assert_close(ens(x), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ens(x[0], shared=True), torch.stack([n(x[0]) for n in nets]),
                               atol=1e-6, rtol=1e-6)
    # seed_nets reproduces the init of a single run seeded the same way
    torch.manual_seed(4)
    single = _mlp(6, depth=2).net
    for a, b in zip(single.parameters(), ens.member(1).parameters(), strict=True):
        assert torch.equal(a, b)


def test_stacked_vmap_path_for_cnn() -> None:
    nets = seed_nets(lambda: CNN(width=2, input_shape=(1, 16), num_classes=3).net, [0, 1])
    for n in nets:
        n.eval()
    ens = StackedEnsemble(nets).eval()
    assert ens._plan is None  # generic torch.func.vmap path
    x = torch.randn(5, 1, 16)
    torch.testing.assert_close(ens(x, shared=True), torch.stack([n(x) for n in nets]), atol=1e-6, rtol=1e-6)


def test_fit_ensemble_equals_separate_loops() -> None:
    data = make_teacher_data(2, 3, "tanh", n_train=64, n_test=8, data_seed=1)
    seeds = [0, 1, 2]
    nets = seed_nets(lambda: _mlp(4, act="tanh").net, seeds)
    ens = StackedEnsemble(copy.deepcopy(nets))
    final, _ = fit_ensemble(ens, data.x_train, data.y_train, steps=40, lr=1e-2, batch_size=16,
                            order_seeds=seeds)
    for i, (s, net) in enumerate(zip(seeds, nets, strict=True)):  # independent single-seed loops
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        gen, pos, perm = torch.Generator().manual_seed(s), 64, None
        for _ in range(40):
            if pos + 16 > 64:
                perm, pos = torch.randperm(64, generator=gen), 0
            idx = perm[pos : pos + 16]
            pos += 16
            loss = MSE(net(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for a, b in zip(net.parameters(), ens.member(i).parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(final[i], MSE(net(data.x_train), data.y_train).detach(),
                                   atol=1e-6, rtol=1e-4)


def _trainer(root: str, epochs: int = 3) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                     num_sanity_val_steps=0, accelerator="cpu")


def test_seed_ensemble_module_equals_single_seed_fits(tmp_path) -> None:
    def opt(p):
        return torch.optim.Adam(p, lr=1e-2)

    kw = dict(width=5, depth=1, input_shape=(2,), num_classes=1, task="regression", optimizer=opt)
    dkw = dict(input_dim=2, teacher_width=4, n_train=120, n_test=40, batch_size=40)
    seeds = [0, 3, 7]
    ens = SeedEnsemble(seeds=seeds, success_threshold=0.5, **kw)
    _trainer(str(tmp_path / "ens")).fit(ens, TeacherStudent(**dkw))
    summary = json.loads((tmp_path / "ens" / "ensemble" / "summary.json").read_text())
    for i, s in enumerate(seeds):
        L.seed_everything(s, verbose=False)
        single = MLP(**kw)
        dm = TeacherStudent(shuffle_seed=s, **dkw)
        _trainer(str(tmp_path / f"single{s}")).fit(single, dm)
        for a, b in zip(single.net.parameters(), ens.member(i).parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        x, y, _ = dm.probe_set(None)
        loss = float(MSE(single(x), y))
        assert summary["final_loss"][i] == pytest.approx(loss, rel=1e-4)
        rel = loss / float(y.var(unbiased=False))
        assert summary["success"][i] == (rel < 0.5)
    assert summary["successes"] == sum(summary["success"])


def test_success_interval_wilson() -> None:
    p, lo, hi = success_interval(10, 50)
    assert p == 0.2
    # Wilson 95% interval for 10/50 (closed form)
    assert lo == pytest.approx(0.1124, abs=1e-3) and hi == pytest.approx(0.3304, abs=1e-3)
    assert success_interval(0, 50)[1] == pytest.approx(0.0, abs=1e-12)


# ---- widening ---------------------------------------------------------------------------------
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
    torch.testing.assert_close(model(x).detach(), before, atol=1e-6, rtol=0)


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
        torch.testing.assert_close(m(x).detach(), before, atol=1e-6, rtol=0)


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

"""Ticket perturbation on teacher-student: sigma = 0 reproduces the original run exactly, removal keeps
exactly the ticket's weights, perturbation touches only the rest."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from overparam_lit.escape import make_teacher_data, seed_nets
from overparam_lit.escape.tickets import fit_masked, ticket_masks, ticket_start
from overparam_lit.utils import ConfigError

SEEDS = [0, 1, 2]


def _setup():
    data = make_teacher_data(2, 2, "relu", n_train=64, n_test=8, data_seed=0)
    inits = seed_nets(lambda: nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 1)), SEEDS)
    kw = {"lr": 1e-2, "batch_size": 16, "order_seeds": SEEDS}
    final, ens = fit_masked(copy.deepcopy(inits), [None] * 3, data.x_train, data.y_train, 30, **kw)
    return data, inits, final, ens, kw


def test_ticket_masks_density_and_magnitude() -> None:
    _, _, _, ens, _ = _setup()
    trained = ens.member(1)
    masks = ticket_masks(trained, 0.25, scope="global")
    assert sum(int(m.sum()) for m in masks.values()) == round(0.25 * (12 + 6))
    kept = torch.cat([trained.get_parameter(n).detach()[m].abs() for n, m in masks.items()])
    dropped = torch.cat([trained.get_parameter(n).detach()[~m].abs() for n, m in masks.items()])
    assert float(kept.min()) >= float(dropped.max())
    layerwise = ticket_masks(trained, 0.5)
    assert [int(m.sum()) for m in layerwise.values()] == [6, 3]


def test_sigma_zero_reproduces_the_original_run_and_removal_keeps_the_ticket() -> None:
    data, inits, final, ens, kw = _setup()
    masks = [ticket_masks(ens.member(i), 0.5) for i in range(3)]
    starts = [ticket_start(n, m, "perturbed", sigma=0.0, seed=7) for n, m in zip(inits, masks, strict=True)]
    assert all(k is None for _, k in starts)
    final0, ens0 = fit_masked([n for n, _ in starts], [None] * 3, data.x_train, data.y_train, 30, **kw)
    assert torch.equal(final0, final)
    for a, b in zip(ens.parameters(), ens0.parameters(), strict=True):
        assert torch.equal(a, b)
    removed = [ticket_start(n, m, "removed") for n, m in zip(inits, masks, strict=True)]
    for (net, kept), m, init in zip(removed, masks, inits, strict=True):
        for name, mk in m.items():
            assert torch.equal(kept[name], mk)
            w, w0 = net.get_parameter(name).detach(), init.get_parameter(name).detach()
            assert torch.equal(w[mk], w0[mk]) and bool((w[~mk] == 0).all())
    _, ens_r = fit_masked([n for n, _ in removed], [k for _, k in removed], data.x_train, data.y_train,
                          30, **kw)
    for i, m in enumerate(masks):
        trained, moved = ens_r.member(i), 0
        for name, mk in m.items():
            w = trained.get_parameter(name).detach()
            assert bool((w[~mk] == 0).all())  # the rest stays removed
            moved += int((w[mk] != inits[i].get_parameter(name).detach()[mk]).sum())
        assert moved > 0  # while the ticket trains


def test_perturbation_touches_only_the_rest() -> None:
    _, inits, _, ens, _ = _setup()
    m = ticket_masks(ens.member(0), 0.3)
    for mode, sigma in (("perturbed", 0.5), ("reinit", 0.0)):
        net, kept = ticket_start(inits[0], m, mode, sigma=sigma, seed=3)
        assert kept is None
        for name, mk in m.items():
            w, w0 = net.get_parameter(name).detach(), inits[0].get_parameter(name).detach()
            assert torch.equal(w[mk], w0[mk])
            assert bool((w[~mk] != w0[~mk]).all())
        assert torch.equal(net.get_parameter("0.bias"), inits[0].get_parameter("0.bias"))
    with pytest.raises(ConfigError, match="unknown ticket perturbation mode"):
        ticket_start(inits[0], m, "shuffle")

"""Driving a small net to a critical point of the MSE loss (float64 L-BFGS, then Newton)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def polish_to_critical_point(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, lbfgs_rounds: int = 3, newton_steps: int = 8,
    max_iter: int = 1000, tolerance_grad: float = 1e-14, stop_off_minimum: bool = False,
) -> nn.Module:
    """Move ``net``'s parameters (in place) to a critical point of ``mse(net(x), y)``.

    ``lbfgs_rounds`` rounds of L-BFGS with a strong-Wolfe line search on the flattened
    parameters, then up to ``newton_steps`` Newton steps on the exact dense Hessian
    (``torch.func.hessian``; small nets only). With ``stop_off_minimum`` the Newton steps stop
    as soon as the Hessian has a negative eigenvalue, since Newton would then climb towards a
    saddle. Use float64 nets and data for gradients near machine precision. Returns ``net``.
    """
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, [t.reshape(s) for t, s in zip(flat.split(sizes), shapes, strict=True)],
                          strict=True))
        return nn.functional.mse_loss(functional_call(net, params, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=0, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(theta)
        loss.backward()
        return loss

    for _ in range(lbfgs_rounds):
        opt.step(closure)
    th = theta.detach()
    for _ in range(newton_steps):
        h = torch.func.hessian(loss_of)(th)
        if stop_off_minimum and float(torch.linalg.eigvalsh(h)[0]) < 0:
            break
        th = th - torch.linalg.lstsq(h, torch.func.grad(loss_of)(th).unsqueeze(1)).solution.squeeze(1)
    with torch.no_grad():
        for p, t in zip(net.parameters(), th.split(sizes), strict=True):
            p.copy_(t.reshape(p.shape))
    return net

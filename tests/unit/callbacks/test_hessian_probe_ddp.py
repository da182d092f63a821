"""Two-process CPU DDP probe: the same lambda_max as one process on the same probe set."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from overparam_lit.curvature import HessianOperator, lanczos
from overparam_lit.data import MNIST1D
from overparam_lit.models import CNN, MLP


@pytest.mark.numeric
@pytest.mark.ddp
def test_ddp_lambda_max_equals_single_process(tmp_path, run_ddp):
    run_ddp("hessian_ddp.py", tmp_path, timeout=240)  # fails the test unless the script exits 0
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["probed_steps"] == r1["probed_steps"] == [0, 4]
    for a, b in zip(r0["history"], r1["history"], strict=True):  # same steps, same numbers
        assert a["hessian/lambda_max"] == b["hessian/lambda_max"]
        assert a["hessian/num_hvps"] == b["hessian/num_hvps"]
    # one process, whole probe set, final weights of the DDP run
    model = MLP(width=12, depth=1, activation="tanh")
    model.net.load_state_dict(r0["net"])
    x, y, _ = MNIST1D(num_samples=400, batch_size=25, train_subset=200).probe_set(101, "train", 0)
    op = HessianOperator(model.net.eval(), nn.functional.cross_entropy, x, y, distributed=False)
    single = lanczos(op, op.dim, k=3, max_iters=60, tol=1e-6,
                     generator=torch.Generator().manual_seed(0))
    ddp = r0["history"][-1]["hessian/lambda_max"]
    # float32 products summed over two ranks' halves and all-reduced vs one sum over 101 samples:
    # ~eps32 * sqrt(101) relative per product; Lanczos converged to 1e-6; relative 1e-5
    assert abs(ddp - single.top[0]) <= 1e-5 * abs(single.top[0])


@pytest.mark.ddp
def test_ddp_probe_uses_rank0_batchnorm_statistics(tmp_path, run_ddp):
    """A step-scheduled probe runs before validation could re-sync BatchNorm buffers: every rank
    must differentiate rank 0's network, the one a checkpoint holds."""
    run_ddp("hessian_ddp.py", tmp_path, "cnn", timeout=240)  # fails the test unless it exits 0
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    stats = [k for k in r0["net"] if k.endswith("running_mean")]
    assert any(not torch.equal(r0["net"][k], r1["net"][k]) for k in stats)  # ranks' statistics differ
    assert r0["history"][-1]["hessian/lambda_max"] == r1["history"][-1]["hessian/lambda_max"]
    model = CNN(width=2)
    model.net.load_state_dict(r0["net"])
    x, y, _ = MNIST1D(num_samples=400, batch_size=25, train_subset=200).probe_set(101, "train", 0)
    op = HessianOperator(model.net.eval(), nn.functional.cross_entropy, x, y, distributed=False)
    single = lanczos(op, op.dim, k=3, max_iters=60, tol=1e-6, generator=torch.Generator().manual_seed(0))
    ddp = r0["history"][-1]["hessian/lambda_max"]
    assert abs(ddp - single.top[0]) <= 1e-5 * abs(single.top[0])

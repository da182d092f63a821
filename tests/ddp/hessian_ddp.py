"""Two CPU processes (gloo) train a small MLP (argv[2] == "mlp") or BatchNorm CNN ("cnn") with a
HessianProbe; each rank saves its probe history and its final state (parameters and BatchNorm
statistics) to argv[1] (used by tests/unit/callbacks/test_hessian_probe_ddp.py)."""

import sys
from pathlib import Path

import torch

from overparam_lit.callbacks.hessian import HessianProbe
from overparam_lit.data import MNIST1D
from overparam_lit.models import CNN, MLP
from overparam_lit.testing import tiny_trainer

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    cnn = len(sys.argv) > 2 and sys.argv[2] == "cnn"
    model = CNN(width=2) if cnn else MLP(width=12, depth=1, activation="tanh")
    probe = HessianProbe(schedule="steps", every=4, probe_size=101, k=3, lanczos_iters=60,
                         tol=1e-6, slq_runs=2, slq_iters=10, save_figure=False)
    trainer = tiny_trainer(out, [probe], devices=2, strategy="ddp", max_steps=4, limit_val_batches=0)
    trainer.fit(model, datamodule=MNIST1D(num_samples=400, batch_size=25, train_subset=200))
    torch.save({"history": probe.history, "probed_steps": probe.probed_steps,
                "net": model.net.state_dict()}, out / f"rank{trainer.global_rank}.pt")

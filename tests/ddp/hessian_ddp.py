"""Two CPU processes (gloo) train a small MLP (argv[2] == "mlp") or BatchNorm CNN ("cnn") with a
HessianProbe; each rank saves its probe history and its final state (parameters and BatchNorm
statistics) to argv[1] (used by tests/test_hessian_probe_ddp.py)."""

import sys
from pathlib import Path

import torch
from lightning import Trainer

from overparam_lit.callbacks.hessian import HessianProbe
from overparam_lit.data import MNIST1D
from overparam_lit.models import CNN, MLP

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    cnn = len(sys.argv) > 2 and sys.argv[2] == "cnn"
    model = CNN(width=2) if cnn else MLP(width=12, depth=1, activation="tanh")
    probe = HessianProbe(schedule="steps", every=4, probe_size=101, k=3, lanczos_iters=60,
                         tol=1e-6, slq_runs=2, slq_iters=10, save_figure=False)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False,
        callbacks=[probe], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=out,
    )
    trainer.fit(model, datamodule=MNIST1D(num_samples=400, batch_size=25, train_subset=200))
    torch.save({"history": probe.history, "probed_steps": probe.probed_steps,
                "net": model.net.state_dict()}, out / f"rank{trainer.global_rank}.pt")

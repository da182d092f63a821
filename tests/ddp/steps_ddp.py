"""Two CPU processes (gloo) train a stacked MLP with ``steps_per_call`` ``argv[2]`` (used by
tests/unit/models/test_steps_per_call.py)."""

import sys
from pathlib import Path

import lightning as L
import torch

from overparam_lit.data import MNIST1D
from overparam_lit.models import MLP
from overparam_lit.testing import tiny_trainer

if __name__ == "__main__":
    root, k = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = MLP(width=16, seeds=[0, 1], input_shape=(1, 40), steps_per_call=k if k == "auto" else int(k))
    trainer = tiny_trainer(root, max_epochs=2, devices=2, strategy="ddp", gradient_clip_val=0.5)
    trainer.fit(model, MNIST1D(batch_size=25, train_subset=200))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "metrics": metrics,
                "step_calls": model.step_calls, "global_step": trainer.global_step},
               root / f"{k}-rank{trainer.global_rank}.pt")

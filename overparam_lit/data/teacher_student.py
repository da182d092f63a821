"""Teacher-student data: Gaussian inputs labelled by a random teacher MLP."""

from __future__ import annotations

from typing import Literal

import torch

from overparam_lit.activations import ACTIVATIONS
from overparam_lit.data.base import LOADED, ArrayDataModule
from overparam_lit.data.cache import cached_tensors
from overparam_lit.escape.teacher import teacher_net
from overparam_lit.utils import check


class TeacherStudent(ArrayDataModule):
    """Inputs ``x ~ N(0, I_d)``; targets from a random teacher MLP of ``teacher_width``.

    ``task='regression'`` gives MSE targets (teacher outputs plus ``target_noise``);
    ``task='classification'`` labels each input with the argmax of the teacher's
    ``num_classes`` outputs.

    Args:
        input_dim: d. teacher_width / teacher_depth: the teacher's hidden layers.
        num_classes: classes, or output dimension for regression.
        n_train / n_test: sample counts. target_noise: std of Gaussian noise on regression
        targets. data_seed: seed of inputs, teacher and noise.
        teacher_activation: the teacher's activation (a name of ``overparam_lit.activations``).
        teacher_scale: factor on the teacher's first-layer weights (e.g. 3 puts tanh units in
            their nonlinear range).
        cache_dir: folder of the on-disk data cache (keyed by every argument above). ``None``
            uses ``$OVERPARAM_LIT_CACHE`` or the user cache folder
            (``$XDG_CACHE_HOME/overparam-lit``, ``~/.cache/overparam-lit``); a path uses that
            folder; ``"none"`` turns caching off.
    """

    def __init__(
        self,
        input_dim: int = 20,
        teacher_width: int = 32,
        teacher_depth: int = 1,
        task: Literal["classification", "regression"] = "regression",
        num_classes: int = 1,
        n_train: int = 1000,
        n_test: int = 1000,
        target_noise: float = 0.0,
        data_seed: int = 0,
        teacher_activation: str = "relu",
        teacher_scale: float = 1.0,
        cache_dir: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        check(task in ("classification", "regression"), "unknown task", task,
              "Set --data.task to 'regression' or 'classification'.")
        check(input_dim >= 1 and teacher_width >= 1 and teacher_depth >= 1,
              "input_dim, teacher_width and teacher_depth must be >= 1",
              (input_dim, teacher_width, teacher_depth), "Use positive sizes.")
        check(num_classes >= (2 if task == "classification" else 1),
              "num_classes must be >= 2 for classification (>= 1 outputs for regression)",
              num_classes, "Set --data.num_classes.")
        check(n_train >= 1 and n_test >= 1, "n_train and n_test must be >= 1", (n_train, n_test),
              "Use positive sample counts.")
        check(teacher_activation in ACTIVATIONS, "unknown teacher activation", teacher_activation,
              f"Set --data.teacher_activation to one of {', '.join(ACTIVATIONS)}.")
        check(teacher_scale > 0, "teacher_scale must be positive", teacher_scale, "Use e.g. 1 or 3.")
        self.teacher_activation, self.teacher_scale = teacher_activation, float(teacher_scale)
        self.task, self.num_classes, self.input_shape = task, int(num_classes), (int(input_dim),)
        self.teacher_width, self.teacher_depth = teacher_width, teacher_depth
        self.n_train, self.n_test = n_train, n_test
        self.target_noise, self.data_seed = target_noise, data_seed
        self.cache_dir = cache_dir

    def load(self) -> dict[str, torch.Tensor]:
        args = {"input_dim": self.input_shape[0], "teacher_width": self.teacher_width,
                "teacher_depth": self.teacher_depth, "task": self.task, "num_classes": self.num_classes,
                "n_train": self.n_train, "n_test": self.n_test, "target_noise": self.target_noise,
                "data_seed": self.data_seed, "teacher_activation": self.teacher_activation,
                "teacher_scale": self.teacher_scale}
        return cached_tensors("teacher_student", args, self._generate,
                              keys=LOADED, cache_dir=self.cache_dir)

    def _generate(self) -> dict[str, torch.Tensor]:
        d, n = self.input_shape[0], self.n_train + self.n_test
        gen = torch.Generator().manual_seed(self.data_seed)
        # Building the teacher's layers draws their default init from torch's global generator
        # (then overwritten); keep that state as it was, so a cache hit and a miss leave it alike.
        with torch.random.fork_rng(devices=[]):
            teacher = teacher_net(d, self.teacher_width, self.teacher_activation, self.teacher_depth,
                                  self.num_classes, self.data_seed + 1)
        with torch.no_grad():
            teacher[0].weight.mul_(self.teacher_scale)
        x = torch.randn(n, d, generator=gen)
        with torch.no_grad():
            out = teacher(x)
        if self.task == "classification":
            y = out.argmax(1)
        else:
            y = out + self.target_noise * torch.randn(out.shape, generator=gen)
        return {"x_train": x[: self.n_train], "y_train": y[: self.n_train],
                "x_test": x[self.n_train :], "y_test": y[self.n_train :]}

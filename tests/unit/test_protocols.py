"""The module's contract with the studies (protocols.StudyModule) and the masks it owns."""

from __future__ import annotations

import torch
from torch import nn

from overparam_lit.callbacks import IterativeMagnitudePruning
from overparam_lit.models import CNN, MLP
from overparam_lit.protocols import ModelChanging, StudyModule, network_of
from overparam_lit.testing import Blobs, tiny_trainer


def test_width_families_fulfil_the_study_contract() -> None:
    for model in (MLP(width=4, input_shape=(1, 8), num_classes=3),
                  MLP(width=4, input_shape=(1, 8), num_classes=3, seeds=2),
                  CNN(width=2, input_shape=(1, 8), num_classes=3)):
        assert isinstance(model, StudyModule)
        assert network_of(model) is model.net
        assert model.pruning_masks is None  # no pruning study yet
        rows = model.member_rows()
        assert len(rows) == model.num_members == len(model.member_networks())


def test_network_of_other_modules() -> None:
    plain = nn.Linear(3, 2)
    assert network_of(plain) is plain and not isinstance(plain, StudyModule)

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(3, 2)

    wrapper = Wrapper()
    assert network_of(wrapper) is wrapper.net


def test_only_widen_declares_model_changes() -> None:
    from overparam_lit.callbacks import HessianProbe, Widen

    assert isinstance(Widen(step=3), ModelChanging)
    assert not isinstance(HessianProbe(), ModelChanging)


def test_the_module_holds_the_pruning_study_masks(tmp_path) -> None:
    """IMP hands its masks to the module (``pruning_masks``) at every level: the module's masks are
    the callback's, and zero exactly the weights that are zero after the fit."""
    torch.manual_seed(0)
    model = MLP(width=16, input_shape=(8,), num_classes=4)
    imp = IterativeMagnitudePruning(levels=1, fraction=0.5, epochs_per_level=1, eval_splits=())
    tiny_trainer(tmp_path, [imp], max_epochs=1).fit(model, Blobs())
    assert model.pruning_masks is imp.masks
    params = dict(model.named_parameters())
    pruned = 0
    for name, mask in model.pruning_masks.items():
        weight = params[name].detach().cpu()
        assert bool((weight[~mask.bool()] == 0).all())
        pruned += int((~mask.bool()).sum())
    assert pruned > 0

"""IMP options that write published protocols down (the MNIST-1D lottery notebook): pooled weight and
bias, the output layer's schedule, levels in steps, replayed batch order, random pruning and the best
accuracy of a control, each checked against a numpy reference."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from tolerances import tol

from overparam_lit import pruning
from overparam_lit.callbacks.imp import IterativeMagnitudePruning
from overparam_lit.callbacks.ticket import TicketStart
from overparam_lit.data.base import TensorBatches
from overparam_lit.models import ResidualMLP
from overparam_lit.pruning.imp import ImpOptions
from overparam_lit.testing import small_mlp
from overparam_lit.utils import ConfigError

LAYERS = {"a": (6, 5), "b": (4, 6)}


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in LAYERS.items():
        out[f"{name}.weight"] = torch.randn(shape, generator=g)
        out[f"{name}.bias"] = torch.randn(shape[0], generator=g)
    return out


def _top(values: np.ndarray, alive: np.ndarray, keep: int) -> np.ndarray:
    """numpy reference: keep the ``keep`` largest ``values`` among ``alive`` (ties by position)."""
    order = np.argsort(-np.where(alive, values, -np.inf), kind="stable")
    out = np.zeros(values.shape, dtype=bool)
    out[order[:keep]] = True
    return out


def _np_prune(w, masks, pools, dens):
    """numpy reference of pooled pruning: each pool keeps round(size * density) by |value|."""
    out = {}
    for names, d in pools:
        vals = np.concatenate([np.abs(w[n].numpy()).ravel() for n in names])
        alive = np.concatenate([masks[n].numpy().ravel() for n in names])
        kept = _top(vals, alive, int(round(vals.size * d)))
        start = 0
        for n in names:
            out[n] = kept[start : start + w[n].numel()].reshape(w[n].shape)
            start += w[n].numel()
    return out


def test_pooled_layerwise_and_own_output_match_numpy():
    w = _weights()
    pools = {n: n.split(".")[0] for n in w}
    masks = pruning.full_masks(w)
    for level, dens in enumerate([0.6, 0.3], start=1):
        got = pruning.magnitude_prune(w, masks, dens, "layerwise", pools=pools)
        ref = _np_prune(w, masks, [(["a.weight", "a.bias"], dens), (["b.weight", "b.bias"], dens)], dens)
        for n in w:
            assert np.array_equal(got[n].numpy(), ref[n]), (level, n)
        masks = got
    # pooling differs from tensors on their own: the small bias is cut at the pool's threshold
    alone = pruning.magnitude_prune(w, pruning.full_masks(w), 0.3, "layerwise")
    assert any(not torch.equal(alone[n], masks[n]) for n in w)
    # global scope, layer b at its own density with weight and bias pooled
    own = {"b.weight": 0.25, "b.bias": 0.25}
    got = pruning.magnitude_prune(w, pruning.full_masks(w), 0.5, "global", own_density=own, pools=pools)
    ref = _np_prune(w, pruning.full_masks(w), [(["a.weight", "a.bias"], 0.5), (["b.weight", "b.bias"], 0.25)],
                    0.5)
    for n in w:
        assert np.array_equal(got[n].numpy(), ref[n])
    with pytest.raises(ValueError, match="mixes densities"):
        pruning.magnitude_prune(w, pruning.full_masks(w), 0.5, "global", own_density={"b.weight": 0.25,
                                "b.bias": 0.5}, pools=pools)


def test_random_pool_masks_keep_pool_counts_and_draw_over_the_pool():
    w = _weights()
    ticket = pruning.magnitude_prune(w, pruning.full_masks(w), 0.4, "layerwise",
                                     pools={n: n.split(".")[0] for n in w})
    ticket["a.bias"] = torch.zeros_like(ticket["a.bias"])  # the ticket keeps no bias of layer a
    pools = [["a.weight", "a.bias"], ["b.weight", "b.bias"]]
    seen_bias = 0
    for seed in range(20):
        drawn = pruning.random_pool_masks(ticket, pools, torch.Generator().manual_seed(seed))
        for pool in pools:
            assert sum(int(drawn[n].sum()) for n in pool) == sum(int(ticket[n].sum()) for n in pool)
        seen_bias += int(drawn["a.bias"].sum())
    assert seen_bias > 0  # positions are drawn over the pool, not at the ticket's per-tensor counts
    within = {"a.weight": torch.zeros(6, 5, dtype=torch.bool), "a.bias": torch.ones(6, dtype=torch.bool)}
    keep_a = {"a.weight": torch.zeros(6, 5, dtype=torch.bool), "a.bias": torch.ones(6, dtype=torch.bool)}
    keep_a["a.bias"][3:] = False
    gen = torch.Generator().manual_seed(0)
    drawn = pruning.random_pool_masks(keep_a, [["a.weight", "a.bias"]], gen, within)
    assert int(drawn["a.bias"].sum()) == 3 and not drawn["a.weight"].any()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pool_bias": True}, "pool_bias needs prune_biases"),
    ({"output": "last"}, "unknown output layer mode"),
    ({"output": "schedule", "output_fraction": 0.1}, "takes no own rate"),
    ({"output": "own"}, "exactly one own rate"),
    ({"output_fraction": 0.1, "output_final_density": 0.5}, "exactly one own rate"),
    ({"output_final_density": 1.5}, "output_final_density must lie"),
    ({"steps_per_level": 0}, "steps_per_level must be a positive integer"),
    ({"steps_per_level": 10, "epochs_per_level": 2}, "epochs or in steps, not both"),
    ({"granularity": "structured", "output": "schedule"}, "structured IMP keeps the output layer"),
])
def test_bad_protocol_options_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        IterativeMagnitudePruning(**kwargs)


def test_output_density_rates():
    geo = ImpOptions(levels=4, output_fraction=0.1)
    assert geo.output_mode == "own"
    assert [geo.output_density(lv) for lv in range(5)] == pytest.approx(0.9 ** np.arange(5))
    lin = ImpOptions(levels=4, schedule="geometric", output="own", output_final_density=0.2)
    assert [lin.output_density(lv) for lv in range(5)] == pytest.approx(1 - 0.8 * np.arange(5) / 4)
    assert ImpOptions(levels=4).output_mode == "dense"
    assert ImpOptions(levels=4, output="schedule").output_density(2) is None


def test_replayed_order_restarts_every_period():
    x = torch.arange(23, dtype=torch.float32).reshape(23, 1)
    y = torch.arange(23)
    plain = TensorBatches((x, y, y), 5, shuffle=True, seed=3, epoch_fn=lambda: 0)
    per_epoch = len(plain)  # 5 batches, the last of 3
    period = 7

    def batches(step):
        loader = TensorBatches((x, y, y), 5, shuffle=True, seed=3, replay_fn=lambda: (step, period))
        return [b[1].tolist() for b in loader]

    def reference(step):
        """numpy-free reference: batch j of 'epoch' e of the order is the e-th per-epoch permutation."""
        out = []
        for i in range(per_epoch):
            e, j = divmod((step + i) % period, per_epoch)
            loader = TensorBatches((x, y, y), 5, shuffle=True, seed=3, epoch_fn=lambda e=e: e)
            out.append([b[1].tolist() for b in loader][j])
        return out

    assert batches(0)[:5] == [b[1].tolist() for b in plain]  # level 0 is the per-epoch order
    for step in (0, 5, 10, 14):
        assert batches(step) == reference(step)
    assert batches(10)[4] == batches(0)[0]  # step 14 replays step 0


def _fit_steps(tmp_path, blobs, tiny_trainer, cb, steps=None, **kw):
    L.seed_everything(0)
    model = small_mlp()
    tr = tiny_trainer(tmp_path, [cb], max_epochs=None, max_steps=steps or -1, deterministic=True, **kw)
    tr.fit(model, blobs(batch_size=50))
    return tr, model


def test_levels_in_steps_pooled_output_on_schedule(tmp_path, blobs, tiny_trainer):
    """Levels of 7 steps (epochs have 4 batches, so levels start mid-epoch), a linear schedule with
    weights and biases pooled per layer and the output layer on it, one batch order replayed."""
    cb = IterativeMagnitudePruning(levels=2, schedule="linear", final_density=0.3, scope="layerwise",
                                   prune_biases=True, pool_bias=True, output="schedule", replay_order=True)
    seen: list[list[int]] = []

    class Batches(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[1].tolist())

    L.seed_everything(0)
    model = small_mlp()
    tr = tiny_trainer(tmp_path, [cb, Batches()], max_epochs=None, max_steps=7, deterministic=True,
                      val_check_interval=2, check_val_every_n_epoch=None)
    tr.fit(model, blobs(batch_size=50))
    assert tr.global_step == 21
    assert seen[7:14] == seen[:7] and seen[14:] == seen[:7]  # every level replays level 0's batches
    assert seen[4:7] != seen[:3]  # the order is not merely one epoch repeated
    summary = json.loads((tmp_path / "imp" / "summary.json").read_text())
    assert [lv["global_step"] for lv in summary["levels"]] == [7, 14, 21]
    assert summary["config"]["steps_per_level"] == 7 and summary["config"]["output"] == "schedule"
    layers = ["net.1", "net.3", "net.5"]
    assert summary["levels"][1]["pools"] == [[f"{m}.weight", f"{m}.bias"] for m in layers]
    imp = tmp_path / "imp"
    for level, dens in ((1, 1 - 0.7 / 2), (2, 0.3)):
        m = torch.load(imp / f"level_{level:02d}" / "mask.pt", weights_only=True)
        prev = torch.load(imp / f"level_{level - 1:02d}" / "mask.pt", weights_only=True)
        final = torch.load(imp / f"level_{level - 1:02d}" / "final.pt", weights_only=True)
        ref = _np_prune(final, prev, [([f"{n}.weight", f"{n}.bias"], dens) for n in layers], dens)
        for n in m:
            assert np.array_equal(m[n].numpy(), ref[n]), (level, n)
    params = dict(model.named_parameters())
    for n, mk in torch.load(imp / "level_02" / "mask.pt", weights_only=True).items():
        assert (params[n][~mk] == 0).all()


def test_levels_in_steps_from_max_steps_and_control_best(tmp_path, blobs, tiny_trainer):
    """trainer.max_steps is the steps of a level; a control's ticket_result.json holds its best
    validation accuracy, the largest of the validations the fit logged."""
    cb = IterativeMagnitudePruning(levels=1, fraction=0.5, scope="layerwise", output_fraction=0.2)
    tr, _ = _fit_steps(tmp_path / "imp_run", blobs, tiny_trainer, cb, steps=6)
    assert tr.global_step == 12
    summary = json.loads((tmp_path / "imp_run" / "imp" / "summary.json").read_text())
    assert summary["levels"][1]["pools"] == [["net.1.weight"], ["net.3.weight"], ["net.5.weight"]]
    ticket = tmp_path / "imp_run" / "imp" / "level_01"
    accs = []

    class Record(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            accs.append(pl_module.member_epoch_metrics("val")["val/acc"].clone())

    start = TicketStart(ticket=str(ticket), mode="random_prune")
    L.seed_everything(0)
    tr = tiny_trainer(tmp_path / "ctl", [start, Record()], max_epochs=None, max_steps=9, val_check_interval=3,
                      check_val_every_n_epoch=None, deterministic=True)
    tr.fit(small_mlp(), blobs(batch_size=50))
    result = json.loads((tmp_path / "ctl" / "imp" / "ticket_result.json").read_text())
    assert len(accs) == 3
    assert result["best_val/acc"] == pytest.approx(float(torch.stack(accs).max()), abs=tol(torch.float32))
    masks = start.masks
    tm = torch.load(ticket / "mask.pt", weights_only=True)
    for n in tm:
        assert int(masks[n].sum()) == int(tm[n].sum())  # one tensor per pool: the ticket's counts


def test_residual_mlp_matches_numpy_and_members():
    model = ResidualMLP(width=7, input_shape=(5,), num_classes=3)
    p = {n: v.detach().double().numpy() for n, v in model.named_parameters()}
    x = torch.randn(4, 5)
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    h = relu(x.double().numpy() @ p["net.l1.weight"].T + p["net.l1.bias"])
    h = h + relu(h @ p["net.l2.weight"].T + p["net.l2.bias"])
    ref = h @ p["net.l3.weight"].T + p["net.l3.bias"]
    np.testing.assert_allclose(model(x).detach().double().numpy(), ref, atol=tol(torch.float32, 7, 10.0))
    assert model.num_params == 5 * 7 + 7 + 7 * 7 + 7 + 7 * 3 + 3
    assert pruning.output_layer_name(model.net) == "l3"
    stack = ResidualMLP(width=7, input_shape=(5,), num_classes=3, seeds=[0, 1])
    L.seed_everything(1)
    single = ResidualMLP(width=7, input_shape=(5,), num_classes=3)
    torch.testing.assert_close(stack(x)[1], single(x), atol=tol(torch.float32, 7, 10.0), rtol=0)


def test_lift_keeps_biases_and_output_dense_and_random_pruning_keeps_the_rest():
    w = _weights()
    masks = pruning.magnitude_prune(w, pruning.full_masks(w), 0.3, "layerwise",
                                    pools={n: n.split(".")[0] for n in w})
    pools = [["a.weight", "a.bias"], ["b.weight", "b.bias"]]
    ticket = pruning.Ticket(masks, {n: v.clone() for n, v in w.items()}, {"pools": pools})
    lifted = pruning.lift_ticket(ticket, ["biases", "output"], "b")
    assert lifted.masks["a.bias"].all() and lifted.masks["b.weight"].all() and lifted.masks["b.bias"].all()
    assert torch.equal(lifted.masks["a.weight"], masks["a.weight"])
    assert lifted.meta["pools"] == [["a.weight"]]
    drawn = pruning.random_pool_masks(lifted.masks, lifted.meta["pools"], torch.Generator().manual_seed(1))
    assert int(drawn["a.weight"].sum()) == int(masks["a.weight"].sum())  # the ticket's count, not the pool's
    assert drawn["b.weight"].all() and drawn["a.bias"].all()
    with pytest.raises(ConfigError, match="unknown part of a ticket"):
        TicketStart(ticket="x", lift=["weights"])


def test_ablation_summary_gap():
    from overparam_lit.studies.figures.lottery_ablation import summarise

    rows = [{"variant": v, "kind": k, "best": b, "density": 0.1, "level": 5}
            for v, k, b in [("none", "ticket", 0.7), ("none", "ticket", 0.8), ("none", "random_prune", 0.5),
                            ("output", "ticket", 0.75), ("output", "random_prune", 0.7)]]
    out = summarise(rows)
    assert out["variants"]["none"]["gap"] == pytest.approx(0.75 - 0.5)
    assert out["variants"]["none"]["ticket"]["lo"] == 0.7 and out["variants"]["none"]["ticket"]["hi"] == 0.8
    assert out["variants"]["output"]["gap"] == pytest.approx(0.05)
    assert "biases" not in out["variants"]


def test_levels_in_steps_are_exact_with_several_steps_per_call(tmp_path, blobs, tiny_trainer):
    """Level boundaries mid-epoch end a call of several optimizer steps exactly: K = 3 gives the
    masks and weights of K = 1."""
    from overparam_lit.models import MLP

    finals = []
    for k in (1, 3):
        L.seed_everything(0)
        model = MLP(width=16, depth=2, input_shape=(8,), num_classes=4, steps_per_call=k)
        cb = IterativeMagnitudePruning(levels=2, fraction=0.5, scope="layerwise", steps_per_level=5,
                                       replay_order=True)
        tr = tiny_trainer(tmp_path / f"k{k}", [cb], max_epochs=None, deterministic=True)
        tr.fit(model, blobs(batch_size=50))
        assert tr.global_step == 15 and model.step_calls == k
        summary = json.loads((tmp_path / f"k{k}" / "imp" / "summary.json").read_text())
        assert [lv["global_step"] for lv in summary["levels"]] == [5, 10, 15]
        finals.append({n: p.detach().clone() for n, p in model.named_parameters()})
        finals.append(torch.load(tmp_path / f"k{k}" / "imp" / "level_02" / "mask.pt", weights_only=True))
    for n in finals[1]:
        assert torch.equal(finals[1][n], finals[3][n])
    for n in finals[0]:
        torch.testing.assert_close(finals[0][n], finals[2][n], atol=tol(torch.float32, 16, 10.0), rtol=0)

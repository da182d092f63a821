"""``overparam-lit export`` on its own: an exported member loads into its single-model class at its
own width, holds exactly the member's tensors and computes what the member computed in the stack;
and the files it refuses to read or to write."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from tolerances import tol

from overparam_lit.models import MLP
from overparam_lit.models.export import check_output, export_member, main
from overparam_lit.models.stack import leading
from overparam_lit.runfolder import RunFolder
from overparam_lit.testing import Blobs, tiny_trainer
from overparam_lit.utils import ConfigError

SEEDS, WIDTHS = [3, 5], [4, 8]  # members (seed, width): (3, 4), (5, 4), (3, 8), (5, 8)
WIDEST, IN, CLASSES = 8, 8, 4


def fit_and_save(root: Path, **members) -> tuple[Path, MLP]:
    """A members MLP after one optimizer step on the blobs, and its checkpoint."""
    L.seed_everything(0, verbose=False)
    model = MLP(width=WIDEST, depth=2, input_shape=(IN,), num_classes=CLASSES, **members)
    trainer = tiny_trainer(root, max_steps=1)
    trainer.fit(model, Blobs(batch_size=50))
    path = root / "stack.ckpt"
    trainer.save_checkpoint(path)
    return path, model


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MLP]:
    return fit_and_save(tmp_path_factory.mktemp("padded"), seeds=SEEDS, widths=WIDTHS)


@pytest.fixture(scope="module")
def seeds_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MLP]:
    return fit_and_save(tmp_path_factory.mktemp("seeds"), seeds=SEEDS)


def batch() -> torch.Tensor:
    return torch.randn(32, IN, generator=torch.Generator().manual_seed(1))


@pytest.mark.numeric
def test_an_exported_member_is_the_member_at_its_own_width(padded, tmp_path: Path) -> None:
    ckpt, stack = padded
    stack.eval()
    x = batch()
    with torch.no_grad():
        outs = stack(x)
    for i, (seed, width) in enumerate((s, w) for w in WIDTHS for s in SEEDS):
        single = MLP.load_from_checkpoint(export_member(ckpt, i, tmp_path / f"m{i}.ckpt"))
        assert single.members is None and single.width == width
        assert single.hparams.get("seeds") is None and single.hparams.get("widths") is None
        own = stack.net.member_state(i)
        for name, t in single.net.state_dict().items():  # the member's trained tensors, cut out exactly
            assert torch.equal(t, own[name][leading(tuple(t.shape))]), (i, name)
        assert single.net[1].weight.shape == (width, IN)
        single.eval()
        with torch.no_grad():
            out = single(x)
        # the stack runs batched matmuls, the single net plain ones: the same float32 products summed
        # in an order the kernels choose, over at most WIDEST terms per output
        scale = max(1.0, float(outs[i].abs().max()))
        torch.testing.assert_close(out, outs[i], rtol=0, atol=tol(torch.float32, WIDEST, scale))
        record = torch.load(tmp_path / f"m{i}.ckpt", weights_only=False)
        assert record["member"] == {"index": i, "seed": seed, "width": width, "source": str(ckpt)}
        assert (record["global_step"], record["model_width"]) == (1, width)


def test_a_member_of_one_width_equals_its_network_in_the_fit(seeds_only, tmp_path: Path) -> None:
    ckpt, stack = seeds_only
    x = batch()
    for i, net in enumerate(stack.member_networks()):
        single = MLP.load_from_checkpoint(export_member(ckpt, i, tmp_path / f"m{i}.ckpt"))
        single.eval()
        net.eval()
        with torch.no_grad():  # one network, the same tensors: the same kernels in the same order
            assert torch.equal(single(x), net(x))
        assert torch.load(tmp_path / f"m{i}.ckpt", weights_only=False)["model_width"] == WIDEST


def test_refused_members_and_checkpoints(padded, tmp_path: Path) -> None:
    ckpt, _ = padded
    out_of_range = r"member index out of range \(got 4\)\. The fit has 4 members: use 0\.\.3"
    with pytest.raises(ConfigError, match=out_of_range):
        export_member(ckpt, 4, tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match="member index out of range"):
        export_member(ckpt, -1, tmp_path / "x.ckpt")
    single = MLP.load_from_checkpoint(export_member(ckpt, 0, tmp_path / "single.ckpt"))
    assert single.members is None
    with pytest.raises(ConfigError, match="the checkpoint is a single model, not a members fit"):
        export_member(tmp_path / "single.ckpt", 0, tmp_path / "y.ckpt")
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ConfigError, match="the checkpoint to export cannot be read: it does not load"):
        export_member(damaged, 0, tmp_path / "y.ckpt")
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "y.ckpt").exists()


def test_out_never_replaces_a_run_s_checkpoint(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    run.last_ckpt.write_bytes(b"x")
    with pytest.raises(ConfigError, match="--out is the checkpoint being exported"):
        check_output(run.last_ckpt, run.last_ckpt)
    with pytest.raises(ConfigError, match="--out lies in a run folder's checkpoints/"):
        check_output(run.checkpoints / "member0.ckpt", run.last_ckpt)
    with pytest.raises(ConfigError, match="--out is a folder"):
        check_output(tmp_path, run.last_ckpt)
    with pytest.raises(ConfigError, match="the folder of --out does not exist"):
        check_output(tmp_path / "missing" / "m.ckpt", run.last_ckpt)
    check_output(tmp_path / "m.ckpt", run.last_ckpt)  # beside the run: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_main_writes_the_member_and_explains_missing_options(padded, tmp_path: Path, capsys) -> None:
    ckpt, _ = padded
    out = tmp_path / "m3.ckpt"
    main([str(ckpt), "--member", "3", "--out", str(out)])
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert MLP.load_from_checkpoint(out).width == WIDTHS[-1]
    with pytest.raises(ConfigError, match=r"^--member is missing \(got `overparam-lit export .*`\)\."):
        main([str(ckpt), "--out", str(tmp_path / "m.ckpt")])
    with pytest.raises(ConfigError, match=r"^--out is missing"):
        main([str(ckpt), "--member", "1"])
    with pytest.raises(ConfigError, match="argument --member: invalid int value"):
        main([str(ckpt), "--member", "one", "--out", str(tmp_path / "m.ckpt")])
    assert not (tmp_path / "m.ckpt").exists()

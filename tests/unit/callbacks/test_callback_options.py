"""The study callbacks take one options dataclass: built from keywords or given whole, shown to
``inspect.signature`` and to ``--trainer.callbacks.help`` as its flat fields; the pure packages word
their errors in domain terms and the callbacks add the command-line flags."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing

import lightning as L
import pytest
import torch

from overparam_lit.callbacks import (
    DecisionRegions,
    HessianProbe,
    IterativeMagnitudePruning,
    TicketStart,
    Widen,
)
from overparam_lit.callbacks.hessian import HessianProbeOptions
from overparam_lit.callbacks.options import option_fields, options_doc
from overparam_lit.cli import main
from overparam_lit.escape.widen_step import WidenOptions
from overparam_lit.models import MLP
from overparam_lit.pruning import ImpLevels, ImpOptions
from overparam_lit.pruning.tickets import TicketOptions, member_mismatch
from overparam_lit.regions import RegionOptions
from overparam_lit.testing import small_mlp
from overparam_lit.utils import ConfigError

OPTIONS = {IterativeMagnitudePruning: ImpOptions, HessianProbe: HessianProbeOptions, Widen: WidenOptions,
           DecisionRegions: RegionOptions, TicketStart: TicketOptions}
SOME = {IterativeMagnitudePruning: {"levels": 2, "fraction": 0.5, "scope": "layerwise", "densities": None},
        HessianProbe: {"schedule": "log_steps", "num_probes": 4, "k": 2, "lanczos_iters": 8,
                       "dtype": "float64", "params": ("net.1",), "progress_every": None},
        Widen: {"epoch": 2, "units": 3, "unit": (0, 1, 0), "ratio": 1},
        DecisionRegions: {"num_planes": 2, "resolution": 16, "epochs": (1, 3), "plane": "anchors"},
        TicketStart: {"ticket": "runs/x/imp/level_01", "mode": "random_prune", "lift": "biases"}}
"""Settings of each callback, some of which the dataclass normalises (tuples, names, numbers)."""


@pytest.mark.parametrize("callback", list(OPTIONS), ids=lambda c: c.__name__)
def test_options_given_whole_equal_the_keywords(callback):
    options = OPTIONS[callback](**SOME[callback])
    by_keywords, whole = callback(**SOME[callback]), callback(options)
    assert whole.opts is options and by_keywords.opts == options


def test_defaults_are_the_dataclass_defaults():
    assert IterativeMagnitudePruning().opts == ImpOptions()
    assert HessianProbe().opts == HessianProbeOptions() and HessianProbe().opts.dtype == torch.float32
    assert DecisionRegions().opts == RegionOptions()
    assert TicketStart(ticket="t").opts == TicketOptions(ticket="t")


def test_imp_fit_is_the_same_either_way(tmp_path, blobs, tiny_trainer):
    settings = {"levels": 1, "fraction": 0.5, "epochs_per_level": 1, "rewind_step": 2}
    masks = []
    for name, cb in (("kw", IterativeMagnitudePruning(**settings)),
                     ("whole", IterativeMagnitudePruning(ImpOptions(**settings)))):
        L.seed_everything(0)
        trainer = tiny_trainer(tmp_path / name, [cb], max_epochs=2, deterministic=True)
        trainer.fit(small_mlp(), blobs(batch_size=50))
        summary = json.loads((tmp_path / name / "imp" / "summary.json").read_text())
        masks.append((summary["config"], cb.masks))
    assert masks[0][0] == masks[1][0]
    assert masks[0][1].keys() == masks[1][1].keys()
    assert all(torch.equal(masks[0][1][n], masks[1][1][n]) for n in masks[0][1])


@pytest.mark.parametrize("callback", list(OPTIONS), ids=lambda c: c.__name__)
def test_signature_is_the_dataclass_fields(callback):
    options = OPTIONS[callback]
    params = inspect.signature(callback).parameters
    fields = option_fields(options)
    assert list(params) == [f.name for f in fields]
    hints = typing.get_type_hints(options)
    for f in fields:
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[f.name].default == f.default and params[f.name].annotation == hints[f.name]
    assert not any(f.name in ("points", "sparsity", "output_mode", "plan") for f in fields)


@pytest.mark.parametrize("callback", list(OPTIONS), ids=lambda c: c.__name__)
def test_positional_or_mixed_arguments_are_refused(callback):
    options = OPTIONS[callback](**SOME[callback])
    with pytest.raises(TypeError, match="takes one"):
        callback(3)
    with pytest.raises(TypeError, match="takes one"):
        callback(options, seed=1)
    with pytest.raises(TypeError, match="has no option 'no_such'"):
        callback(no_such=1)


def _docs(options: type) -> dict[str, str]:
    from docstring_parser import parse

    return {p.arg_name: " ".join((p.description or "").split()) for p in parse(options_doc(options)).params}


@pytest.mark.parametrize("callback", list(OPTIONS), ids=lambda c: c.__name__)
def test_help_lists_every_option_with_its_doc(callback, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--trainer.callbacks.help", callback.__name__])
    assert exc.value.code in (0, None)
    out = " ".join(capsys.readouterr().out.split())
    docs = _docs(OPTIONS[callback])
    for f in option_fields(OPTIONS[callback]):
        assert docs.get(f.name), f"{f.name} has no Args entry"
        shown = repr(f.default) if isinstance(f.default, tuple) else str(f.default)
        default = "null" if f.default is None else shown
        assert f"--trainer.callbacks.{f.name} " in out
        assert f"{docs[f.name]} (type: " in out, f.name
        assert f"default: {default})" in out, f.name


def test_a_doc_is_written_once():
    """Each field has one ``Args:`` entry, on the dataclass that declares it; none on the callback."""
    from docstring_parser import parse

    for callback, options in OPTIONS.items():
        assert "Args:" not in (callback.__doc__ or "")
        entries = [p.arg_name for cls in options.__mro__ if dataclasses.is_dataclass(cls)
                   for p in parse(cls.__dict__.get("__doc__") or "").params]
        assert sorted(entries) == sorted(f.name for f in option_fields(options)), callback.__name__


# ---- domain wording in the pure packages, flags from the callbacks ------------------------------
def test_structured_imp_of_members(tmp_path, blobs, tiny_trainer):
    stack = MLP(width=8, depth=2, input_shape=(8,), num_classes=4, seeds=2)
    opts = ImpOptions(levels=1, granularity="structured")
    with pytest.raises(ConfigError, match="prunes single models only") as pure:
        ImpLevels.from_options(opts).attach(stack, opts)
    assert "--" not in str(pure.value) and "prune a single model" in str(pure.value)
    trainer = tiny_trainer(tmp_path, [IterativeMagnitudePruning(opts)], max_epochs=1)
    with pytest.raises(ConfigError, match="prunes single models only") as cli:
        trainer.fit(stack, blobs(batch_size=50))
    assert "fit without --model.seeds/widths" in str(cli.value)


def test_regions_of_a_regression_model(tmp_path, blobs, tiny_trainer):
    model = small_mlp()
    model.task = "regression"
    with pytest.raises(ConfigError, match="need a classification model") as pure:
        RegionOptions().check_fit(model, blobs())
    assert "callbacks/" not in str(pure.value) and ".yaml" not in str(pure.value)
    trainer = tiny_trainer(tmp_path, [DecisionRegions(num_planes=2, resolution=8)], max_epochs=1)
    with pytest.raises(ConfigError, match="need a classification model") as cli:
        trainer.fit(model, blobs(batch_size=50))
    assert "Remove callbacks/regions.yaml for regression runs." in str(cli.value)


def test_widen_of_padded_widths(tmp_path, blobs, tiny_trainer):
    stack = MLP(width=8, depth=2, input_shape=(8,), num_classes=4, widths=[4, 8])
    with pytest.raises(ConfigError, match="members of one width only") as pure:
        WidenOptions(step=1).check_module(stack)
    assert "--" not in str(pure.value)
    trainer = tiny_trainer(tmp_path, [Widen(step=1)], max_steps=4)
    with pytest.raises(ConfigError, match="members of one width only") as cli:
        trainer.fit(stack, blobs(batch_size=50))
    assert "Use --model.seeds with one --model.width" in str(cli.value)


def test_ticket_of_other_members(tmp_path, blobs, tiny_trainer):
    from overparam_lit import pruning

    L.seed_everything(0)
    imp = IterativeMagnitudePruning(levels=1, fraction=0.5, epochs_per_level=1)
    tiny_trainer(tmp_path / "imp", [imp], max_epochs=2).fit(small_mlp(width=8), blobs(batch_size=50))
    level = tmp_path / "imp" / "imp" / "level_01"
    stack = MLP(width=8, depth=2, input_shape=(8,), num_classes=4, seeds=2)
    ticket = pruning.load_ticket(level)
    assert member_mismatch(ticket, small_mlp(width=8)) is None
    said = "the ticket is of a single model and this fit has 2 members"
    assert member_mismatch(ticket, stack).startswith(said)
    with pytest.raises(ConfigError, match="single model and this fit has 2 members") as pure:
        pruning.check_ticket(ticket, stack)
    assert "--" not in str(pure.value)
    trainer = tiny_trainer(tmp_path / "t", [TicketStart(ticket=str(level))], max_epochs=1)
    with pytest.raises(ConfigError, match="single model and this fit has 2 members") as cli:
        trainer.fit(stack, blobs(batch_size=50))
    assert "same --model.seeds/--model.widths as this fit" in str(cli.value)

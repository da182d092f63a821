"""The run folder's config.yaml: the YAML dump it goes through writes jsonargparse's text exactly,
the two settings a rerun should not inherit are changed in the text only, and the file waits for
the disk when the fit ends or stops."""

from __future__ import annotations

import os
import random
import string
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from jsonargparse import ArgumentParser, Namespace

from overparam_lit.cli.save_config import YAML_OPTIONS, SaveRunConfig, _plain, yaml_dump

CONFIG = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "max_epochs": 40, "limit_val_batches": 0.0, "logger": None,
                "callbacks": [{"class_path": "overparam_lit.callbacks.HessianProbe",
                               "init_args": {"every_n_steps": 50, "plan": "auto"}}],
                "default_root_dir": "/tmp/runs/a b/run-1", "detect_anomaly": False},
    "model": {"class_path": "overparam_lit.models.MLP",
              "init_args": {"width": 256, "optimizer": {"class_path": "torch.optim.Adam",
                                                        "init_args": {"lr": 0.001, "betas": [0.9, 0.999],
                                                                      "eps": 1e-08}}}},
    "wandb": {"tags": [], "name": None},
}

ODD = [
    {"name": "a: b \u00e9 \U0001f600 # x"},  # libyaml escapes characters beyond the BMP
    {"": 1}, {"k" * 130: 1}, {"a key": 1}, {1: "int key"},
    {"text": "line\nbreak"}, {"text": "'quoted' \"twice\""}, {"text": "tab\tin"},
    {"values": ["null", "true", "1e3", "-", "", " lead", "trail ", "#", "a: b", "~"]},
]
"""Data that libyaml can write otherwise than PyYAML (PyYAML's emitter writes it)."""

PLAIN = [
    CONFIG, {"text": "x " * 60, "path": "/a/" * 40},
    {"floats": [float("inf"), float("nan"), -0.0, 1e300, 2.5e-310], "ints": [10**30, -1]},
]
"""Data that both emitters write alike (libyaml's writes it)."""


def plain_text(rnd: random.Random) -> str:
    pool = string.ascii_letters + string.digits + "_./: -"
    return "".join(rnd.choice(pool) for _ in range(rnd.choice([0, 1, 3, 12, 79, 81, 200])))


def plain_value(rnd: random.Random, depth: int = 0) -> object:
    r = rnd.random()
    if depth < 3 and r < 0.2:
        return {"".join(rnd.choice(string.ascii_letters + "_./-") for _ in range(rnd.randint(1, 40))):
                plain_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))}
    if depth < 3 and r < 0.3:
        return [plain_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    if r < 0.45:
        return rnd.choice([None, True, False, 0, -7, 10**20, 0.1, 1e-8, float("inf"), float("nan")])
    return rnd.choice(["null", "yes", "1.0", "0x1F", "2024-01-01", "-", ":", "a:", "a :b", ""]
                      if rnd.random() < 0.3 else [plain_text(rnd)])


def test_the_yaml_options_are_jsonargparse_own() -> None:
    from jsonargparse._loaders_dumpers import dump_yaml_kwargs

    assert dump_yaml_kwargs == YAML_OPTIONS


@pytest.mark.parametrize("data", [*PLAIN, *ODD])
def test_the_yaml_dump_writes_what_pyyaml_writes(data: object) -> None:
    assert yaml_dump(data) == yaml.safe_dump(data, **YAML_OPTIONS)


def test_a_config_of_plain_values_takes_libyaml_and_odd_strings_do_not() -> None:
    assert all(_plain(d) for d in PLAIN) and not any(_plain(d) for d in ODD)
    rnd = random.Random(0)
    for _ in range(500):
        data = {f"key_{i}": plain_value(rnd) for i in range(rnd.randint(1, 5))}
        assert _plain(data)
        libyaml = yaml.dump(data, Dumper=yaml.CSafeDumper, **YAML_OPTIONS)
        assert libyaml == yaml.safe_dump(data, **YAML_OPTIONS)


def saver() -> SaveRunConfig:
    parser = ArgumentParser()
    parser.add_argument("--overwrite", type=bool, default=False)
    parser.add_argument("--threads", type=int | None, default=None)
    parser.add_argument("--width", type=int, default=8)
    return SaveRunConfig(parser, parser.parse_args(["--overwrite", "true", "--threads", "3"]))


def test_the_saved_text_does_not_overwrite_or_fix_threads_and_the_config_stays() -> None:
    cb = saver()
    assert cb.config_text() == "overwrite: false\nthreads: null\nwidth: 8\n"
    assert cb.config == Namespace(overwrite=True, threads=3, width=8)


def test_a_failed_dump_leaves_the_config_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    cb = saver()

    def fail(*args: object, **kwargs: object) -> str:
        raise ValueError("cannot dump")

    monkeypatch.setattr(cb.parser, "dump", fail)
    with pytest.raises(ValueError, match="cannot dump"):
        cb.config_text()
    assert cb.config == Namespace(overwrite=True, threads=3, width=8)


def test_the_config_waits_for_the_disk_when_the_fit_ends_or_stops(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real(fd))[1])
    trainer = SimpleNamespace(log_dir=str(tmp_path), is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda value: value))
    module = SimpleNamespace(input_shape=(1, 40), num_classes=10, task="classification")
    for end in ("teardown", "on_exception"):
        cb = saver()
        cb.setup(trainer, module, "fit")
        text = (tmp_path / "config.yaml").read_text()
        assert text.startswith("overwrite: false\nthreads: null\nwidth: 8\n")
        assert text.endswith("#   model.init_args.input_shape: [1, 40]\n#   model.init_args.num_classes: 10\n"
                             "#   model.init_args.task: classification\n")
        assert synced == []  # not before the first step
        getattr(cb, end)(trainer, module, "fit" if end == "teardown" else RuntimeError())
        assert sorted(synced) == sorted(str(p.resolve()) for p in (tmp_path, tmp_path / "config.yaml"))
        cb.teardown(trainer, module, "test")
        assert len(synced) == 2  # once
        synced.clear()

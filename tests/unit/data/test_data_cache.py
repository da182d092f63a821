"""On-disk cache of generated data sets: bit-identical hits, keys, damage, concurrency, RNG state.

Every test points ``OVERPARAM_LIT_CACHE`` (and ``HOME``/``XDG_CACHE_HOME``) into ``tmp_path``, so
nothing here touches the real user cache.
"""

from __future__ import annotations

import ast
import multiprocessing
import random
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from overparam_lit.data import MNIST1D, TeacherStudent, Toy2D
from overparam_lit.data import cache as cache_mod
from overparam_lit.data import mnist1d as mnist1d_mod
from overparam_lit.data.cache import (
    CACHE_ENV,
    DataCacheWarning,
    cache_path,
    cache_root,
    cached_tensors,
    canonical_key,
    library_versions,
)

SPLITS = ("x_train", "y_train", "x_test", "y_test")

# name -> (factory of a data module from keyword arguments, (module, attribute) of its generator)
DATASETS: dict[str, tuple[Callable[..., object], tuple[str, str]]] = {
    "mnist1d": (lambda **kw: MNIST1D(**{"num_samples": 300, **kw}),
                ("overparam_lit.data.mnist1d", "generate_mnist1d")),
    "mnist1d_default": (lambda **kw: MNIST1D(**kw), ("overparam_lit.data.mnist1d", "generate_mnist1d")),
    "teacher_regression": (lambda **kw: TeacherStudent(**{"n_train": 64, "n_test": 32, "target_noise": 0.1,
                                                           **kw}),
                           ("overparam_lit.data.teacher_student", "teacher_net")),
    "teacher_classification": (lambda **kw: TeacherStudent(**{"task": "classification", "num_classes": 3,
                                                               "teacher_activation": "tanh",
                                                               "teacher_scale": 3.0, **kw}),
                               ("overparam_lit.data.teacher_student", "teacher_net")),
    "toy2d_spirals": (lambda **kw: Toy2D(**kw), ("overparam_lit.data.toy2d", "make_toy2d")),
    "toy2d_xor": (lambda **kw: Toy2D(**{"dataset": "xor", "n_train": 200, **kw}),
                  ("overparam_lit.data.toy2d", "make_toy2d")),
}


@pytest.fixture(autouse=True)
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache folder of this test, named by the environment variable; home is moved too."""
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return root


def forbid(monkeypatch: pytest.MonkeyPatch, target: tuple[str, str]) -> None:
    """Make a generator raise, so a load that still works must have been a cache hit."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{target[1]} was called on what should be a cache hit")

    monkeypatch.setattr(sys.modules[target[0]], target[1], boom)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b) == set(SPLITS)
    for k in SPLITS:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("name", list(DATASETS))
def test_cached_data_equal_fresh_data_and_second_load_is_a_hit(
    name: str, cache_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, target = DATASETS[name]
    mnist1d_mod.generate_mnist1d.cache_clear()
    fresh = make(cache_dir="none").load()
    dm_fresh = make(cache_dir="none", val_size=10)
    dm_fresh.setup()
    assert files(cache_env) == []
    first = make().load()  # a miss: generates and writes
    (entry,) = files(cache_env)
    assert entry.endswith(".pt") and entry.startswith(name.split("_")[0])
    assert_same(first, fresh)
    forbid(monkeypatch, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = make().load()
        dm_hit = make(val_size=10)
        dm_hit.setup()  # the splits and labels are those of a fit without the cache
    assert_same(hit, fresh)
    for split in ("train", "val", "test"):
        for a, b in zip(dm_hit.splits[split], dm_fresh.splits[split], strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_explicit_cache_dir_is_used(tmp_path: Path, cache_env: Path) -> None:
    folder = tmp_path / "mine"
    Toy2D(cache_dir=str(folder)).load()
    assert len(files(folder)) == 1 and files(cache_env) == []


# every argument that changes the data, with another value
VARIANTS = {
    "mnist1d": (MNIST1D, {"num_samples": 300},
                {"num_samples": 400, "train_split": 0.5, "generation_seed": 1}),
    "teacher_student": (
        TeacherStudent, {"num_classes": 2},
        {"input_dim": 5, "teacher_width": 8, "teacher_depth": 2, "task": "classification",
         "num_classes": 3, "n_train": 10, "n_test": 11, "target_noise": 0.5, "data_seed": 3,
         "teacher_activation": "tanh", "teacher_scale": 2.0},
    ),
    "toy2d": (Toy2D, {}, {"dataset": "circles", "num_classes": 4, "n_train": 100, "n_test": 7,
                          "noise": 0.2, "data_seed": 5}),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_argument_changes_the_key(name: str, monkeypatch: pytest.MonkeyPatch, cache_env: Path) -> None:
    cls, base, changes = VARIANTS[name]
    paths: list[Path] = []

    def record(gen_name: str, args: dict, generate: object, **kw: object) -> dict:
        key = canonical_key(gen_name, kw.get("recipe", 1), args,  # type: ignore[arg-type]
                            library_versions(*kw.get("packages", ())))  # type: ignore[misc]
        paths.append(cache_path(cache_env, gen_name, key))
        return {}

    monkeypatch.setattr(sys.modules[cls.__module__], "cached_tensors", record)
    cls(**base).load()
    for arg, value in changes.items():
        cls(**{**base, arg: value}).load()
    assert len(paths) == len(set(paths)) >= len(changes) + 1
    # non-data arguments (batching, label noise) share the entry
    cls(**base, batch_size=7, label_noise=0.1, noise_seed=9, train_subset=5).load()
    assert paths[-1] == paths[0]


def test_key_covers_name_recipe_arguments_and_library_versions() -> None:
    args = {"a": 1, "b": 0.25}
    base = canonical_key("toy", 1, args, {"torch": "2"})
    others = [
        canonical_key("toy2", 1, args, {"torch": "2"}),
        canonical_key("toy", 2, args, {"torch": "2"}),
        canonical_key("toy", 1, {"a": 1, "b": 0.2500001}, {"torch": "2"}),
        canonical_key("toy", 1, {"a": 1.0, "b": 0.25}, {"torch": "2"}),
        canonical_key("toy", 1, args, {"torch": "2", "mnist1d": "0.0.2"}),
        canonical_key("toy", 1, args, {"torch": "3"}),
    ]
    assert len({base, *others}) == len(others) + 1
    assert canonical_key("toy", 1, {"b": 0.25, "a": 1}, {"torch": "2"}) == base  # order-free
    assert canonical_key("toy", 1, {"a": np.int64(1), "b": np.float64(0.25)}, {"torch": "2"}) == base
    assert "mnist1d" in library_versions("mnist1d") and "torch" in library_versions()
    with pytest.raises(TypeError, match="JSON"):
        canonical_key("toy", 1, {"a": object()}, {})


def damage(path: Path, how: str) -> None:
    if how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "wrong_keys":
        payload = torch.load(path, weights_only=True)
        payload["tensors"].pop("y_test")
        torch.save(payload, path)
    elif how == "other_entry":
        payload = torch.load(path, weights_only=True)
        payload["key"] = payload["key"].replace('"noise"', '"noize"')
        torch.save(payload, path)
    elif how == "not_a_dict":
        torch.save([torch.zeros(3)], path)


@pytest.mark.parametrize("how", ["random", "truncated", "empty", "wrong_keys", "other_entry", "not_a_dict"])
def test_damaged_file_is_regenerated_with_a_warning_and_fixed(
    how: str, cache_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = Toy2D(cache_dir="none").load()
    Toy2D().load()
    (path,) = cache_env.iterdir()
    damage(path, how)
    with pytest.warns(DataCacheWarning, match="damaged.*regenerating") as rec:
        again = Toy2D().load()
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert_same(again, fresh)
    forbid(monkeypatch, DATASETS["toy2d_spirals"][1])  # fixed on disk: the next load is a hit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(Toy2D().load(), fresh)
    assert files(cache_env) == [path.name]


def test_damaged_mnist1d_entry_is_regenerated(cache_env: Path) -> None:
    fresh = MNIST1D(num_samples=300, cache_dir="none").load()
    MNIST1D(num_samples=300).load()
    (path,) = cache_env.iterdir()
    damage(path, "truncated")
    with pytest.warns(DataCacheWarning, match="damaged"):
        assert_same(MNIST1D(num_samples=300).load(), fresh)
    assert_same(torch.load(path, weights_only=True)["tensors"], fresh)


def test_unwritable_cache_folder_falls_back_with_one_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    folder = str(blocker / "cache")  # cannot be created, even by root
    fresh = Toy2D(cache_dir="none").load()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        first = Toy2D(cache_dir=folder).load()
        second = Toy2D(cache_dir=folder, data_seed=1).load()
    msgs = [str(w.message) for w in rec if issubclass(w.category, DataCacheWarning)]
    assert len(msgs) == 1 and "cannot write the data cache folder" in msgs[0]
    assert_same(first, fresh)
    assert_same(second, Toy2D(cache_dir="none", data_seed=1).load())


def test_cache_none_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for dm in (MNIST1D(num_samples=300, cache_dir="none"), TeacherStudent(cache_dir="NONE"),
               Toy2D(cache_dir="none")):
        dm.load()
    for value in ("none", ""):  # the environment variable turns it off as well
        monkeypatch.setenv(CACHE_ENV, value)
        Toy2D().load()
    assert list(tmp_path.rglob("*")) == []


def test_cache_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root(str(tmp_path / "x")) == tmp_path / "x"
    assert cache_root("none") is None and cache_root("None") is None and cache_root("") is None
    assert cache_root(None) == tmp_path / "cache"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == tmp_path / "xdg" / "overparam-lit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "overparam-lit"
    monkeypatch.setenv(CACHE_ENV, "~/elsewhere")
    assert cache_root() == tmp_path / "home" / "elsewhere"


def _make_blob() -> dict[str, torch.Tensor]:
    x = torch.arange(60_000, dtype=torch.float32).reshape(-1, 2)
    return {"x_train": x, "y_train": x[:, 0].long() % 3, "x_test": x[:5], "y_test": torch.zeros(5)}


def _writer(root: str, barrier: object, rounds: int) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    for _ in range(rounds):
        out = cached_tensors("blob", {"n": 1}, _make_blob, keys=SPLITS, cache_dir=root)
        assert torch.equal(out["x_train"], _make_blob()["x_train"])
        key = canonical_key("blob", 1, {"n": 1}, library_versions())
        cache_mod._write(cache_path(Path(root), "blob", key), key, _make_blob())  # rewrite the same key


def _reader(root: str, barrier: object, rounds: int) -> None:
    key = canonical_key("blob", 1, {"n": 1}, library_versions())
    path = cache_path(Path(root), "blob", key)
    barrier.wait()  # type: ignore[attr-defined]
    seen = 0
    for _ in range(rounds):
        try:
            got = cache_mod._read(path, key, SPLITS)  # a _Damaged error would fail the process
        except FileNotFoundError:  # before the first write lands
            continue
        assert torch.equal(got["y_train"], _make_blob()["y_train"])
        seen += 1


def test_concurrent_writers_leave_one_valid_file_and_no_temp_files(cache_env: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(str(cache_env), barrier, 15)) for _ in range(3)]
    procs.append(ctx.Process(target=_reader, args=(str(cache_env), barrier, 100)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(files(cache_env)) == 1 and files(cache_env)[0].endswith(".pt")  # no .tmp left over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cached_tensors("blob", {"n": 1}, lambda: pytest.fail("regenerated"), keys=SPLITS)
    for k, v in _make_blob().items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype


@pytest.mark.parametrize("name", ["mnist1d", "teacher_regression", "toy2d_spirals"])
def test_global_rng_state_untouched_by_a_miss_and_a_hit(name: str, cache_env: Path) -> None:
    make = DATASETS[name][0]

    def draws() -> tuple[float, float, float]:
        return float(np.random.rand()), random.random(), float(torch.rand(()))

    def seed() -> None:
        np.random.seed(123), random.seed(123), torch.manual_seed(123)

    seed()
    expect = draws()
    for _ in ("miss", "hit"):
        mnist1d_mod.generate_mnist1d.cache_clear()
        seed()
        make().load()
        assert draws() == expect
    assert len(files(cache_env)) == 1


def test_a_hit_does_not_import_mnist1d(monkeypatch: pytest.MonkeyPatch) -> None:
    MNIST1D(num_samples=300).load()
    for mod in [m for m in sys.modules if m == "mnist1d" or m.startswith("mnist1d.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # any import of it now raises ImportError
    mnist1d_mod.generate_mnist1d.cache_clear()
    assert MNIST1D(num_samples=300).load()["x_train"].shape == (240, 1, 40)
    with pytest.raises(ImportError):
        MNIST1D(num_samples=301).load()  # a miss needs the package


def test_cache_module_imports_stay_light() -> None:
    tree = ast.parse(Path(cache_mod.__file__).read_text())
    top = set()
    for node in tree.body:  # module-level imports only; function bodies import lazily
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add((node.module or "").split(".")[0])
    assert top <= {"__future__", "hashlib", "json", "os", "warnings", "collections", "pathlib", "typing",
                   "numpy", "torch", "overparam_lit"}, top
    utils_tree = ast.parse(Path(sys.modules["overparam_lit.utils"].__file__).read_text())
    utils_top = {a.name.split(".")[0] for n in utils_tree.body if isinstance(n, ast.Import) for a in n.names}
    assert not utils_top & {"lightning", "matplotlib", "scipy", "wandb", "mnist1d"}

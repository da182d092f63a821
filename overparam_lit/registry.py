"""The studies a fit can run, each declared in one place, and found here by the rest of the house.

A study is a slice of the framework: a callback that schedules it, the options that callback
takes, the artifacts it writes under the run folder, whether it changes the model (and how a
checkpoint of the changed model is loaded back), and how its results are read and drawn. Each
built-in study declares all of that in one :class:`Study` in the ``study.py`` module of its package
(``pruning/study.py``: IMP and ticket starts; ``curvature/study.py``: the Hessian probe;
``regions/study.py``; ``escape/study.py``: mid-fit widening; ``studies/members_study.py``: the
members table). :class:`~overparam_lit.runfolder.RunFolder`, the CLI's resume checks and
:class:`~overparam_lit.models.base.OverparamModule` ask this registry instead of naming studies.

A study of one's own plugs in the same way: build a :class:`Study` and :func:`register` it in the
module that defines its callback, so it is registered once the config names that callback::

    register(Study("toy", callback="my_study.ToyProbe",
                   artifacts={"toy": "toy/", "toy_json": "toy/toy.json"}))

after which ``RunFolder(run).toy_json`` names the file, ``--overwrite`` clears ``toy/`` and a
sweep's ``{main.toy_json}`` refers to it.

Classes and functions are named by import path (``"package.module.Name"``), so this module and
the declarations import no Lightning: the pure readers use them too.
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overparam_lit.utils import check

__all__ = ["Study", "artifact", "find", "for_callback", "load", "register", "studies"]

BUILTIN = ("overparam_lit.pruning.study", "overparam_lit.curvature.study", "overparam_lit.regions.study",
           "overparam_lit.escape.study", "overparam_lit.studies.members_study")
"""Modules that declare the built-in studies (imported on the first lookup)."""


@dataclass(frozen=True)
class Study:
    """One study, declared once.

    Args:
        name: short name (``imp``); also the fragment ``callbacks/<fragment>.yaml`` names it.
        callback: import path of the callback class (or several, for a study with more than one).
        options: import path of the options dataclass the callback takes (``None``: none).
        artifacts: its files under the run folder, by the :class:`RunFolder` attribute that names
            each: a path relative to the run folder, with ``str.format`` fields for the
            attribute's arguments (``"imp/level_{:02d}/mask.pt"``: ``RunFolder(r).imp_mask(3)``),
            a trailing ``/`` for a folder, or a glob in ``*`` for a method that lists what exists
            (sorted). The first path component of every artifact is the study's folder: a run that
            holds it holds a run (``--overwrite`` clears it) and a killed fit's temporary files in
            it are removed on resume.
        changes_model: the callback changes the network (prunes, widens): a checkpoint it wrote
            cannot resume without it (the CLI refuses with the ``fragment`` to add).
        fragment: the packaged config fragment that adds the callback (``callbacks/<fragment>.yaml``).
        load_checkpoint: import path of ``f(module, checkpoint) -> None``, called by the module
            before a checkpoint's weights load, to bring the network to the checkpoint's shapes
            (a widened network grows back); ``None``: the network is unchanged in shape.
        attach: import path of ``f(module) -> bool``: the module adds this study's callback to
            every fit where it is true (the members table to fits with members).
        reader: import path of the function that reads one run's results of this study (rows).
        figures: the ``overparam-lit plot`` figures that draw it.
    """

    name: str
    callback: str | tuple[str, ...]
    options: str | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)
    changes_model: bool = False
    fragment: str | None = None
    load_checkpoint: str | None = None
    attach: str | None = None
    reader: str | None = None
    figures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(bool(self.name) and self.name.isidentifier(), "a study's name must be an identifier",
              self.name, "Use e.g. 'toy'.")
        for attr, path in self.artifacts.items():
            check(attr.isidentifier() and not attr.startswith("_"), "an artifact's name must be a public "
                  "identifier (it becomes a RunFolder attribute)", attr, "Use e.g. 'toy_json'.")
            check(bool(path) and not path.startswith(("/", ".")), "an artifact's path must be relative to "
                  "the run folder", path, "Write e.g. 'toy/toy.json'.")

    @property
    def callbacks(self) -> tuple[str, ...]:
        """Import paths of the study's callback classes."""
        return (self.callback,) if isinstance(self.callback, str) else tuple(self.callback)

    @property
    def callback_names(self) -> tuple[str, ...]:
        """The callbacks' class names (how a checkpoint's callback states are keyed)."""
        return tuple(path.rsplit(".", 1)[-1] for path in self.callbacks)

    @property
    def folders(self) -> tuple[str, ...]:
        """The top-level names the study writes under the run folder."""
        return tuple(dict.fromkeys(p.split("/", 1)[0] for p in self.artifacts.values()))


_STUDIES: dict[str, Study] = {}
_loaded: list[bool] = [False]


def _builtin() -> None:
    if not _loaded[0]:
        _loaded[0] = True
        for module in BUILTIN:
            importlib.import_module(module)


def register(study: Study) -> Study:
    """Add ``study`` (again: replace the one of its name, so re-importing its module is harmless).

    Raises :class:`~overparam_lit.utils.ConfigError` when one of its artifacts' attributes is
    already another study's (or a :class:`RunFolder` attribute of its own)."""
    from overparam_lit.runfolder import RunFolder

    for other in _STUDIES.values():
        if other.name == study.name:
            continue
        taken = sorted(set(other.artifacts) & set(study.artifacts))
        check(not taken, f"study {study.name!r} names artifacts that study {other.name!r} names", taken,
              "Prefix the artifact names with the study's name.")
    core = sorted(a for a in study.artifacts if a in vars(RunFolder))
    check(not core, f"study {study.name!r} names artifacts that are the run folder's own", core,
          "Prefix the artifact names with the study's name.")
    core = sorted(set(study.folders) & set(RunFolder.CORE_ARTIFACTS))
    check(not core, f"study {study.name!r} writes into names that are the run folder's own", core,
          "Keep the study's files in a folder of its own name (e.g. 'toy/toy.json').")
    _STUDIES[study.name] = study
    return study


def studies() -> list[Study]:
    """Every registered study, the built-in ones first."""
    _builtin()
    return list(_STUDIES.values())


def find(name: str) -> Study:
    """The study called ``name`` (a :class:`ConfigError` listing the names otherwise)."""
    _builtin()
    check(name in _STUDIES, "no such study", name, f"Use one of {', '.join(_STUDIES)}.")
    return _STUDIES[name]


def for_callback(class_name: str) -> Study | None:
    """The study whose callback class is called ``class_name`` (a checkpoint's callback state key
    such as ``IterativeMagnitudePruning`` or ``HessianProbe{...}``), if any."""
    base = class_name.split("{", 1)[0]
    return next((s for s in studies() if base in s.callback_names), None)


def load(path: str) -> Any:
    """The object at import path ``"package.module.Name"``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# ---- artifact paths (RunFolder's study attributes) ------------------------------------------
def artifact(name: str) -> str | None:
    """The declared path of the artifact that :class:`RunFolder` attribute ``name`` names."""
    for study in studies():
        if name in study.artifacts:
            return study.artifacts[name]
    return None


def artifact_names() -> list[str]:
    """Every study artifact's attribute name."""
    return [a for s in studies() for a in s.artifacts]


def arity(path: str) -> int:
    """How many arguments the artifact's attribute takes (its ``str.format`` fields)."""
    return sum(1 for _, name, _, _ in string.Formatter().parse(path) if name is not None)


def resolve(root: Path, path: str) -> Path | Callable[..., Any]:
    """What ``RunFolder(root).<artifact>`` is: a path (no fields), a function of the fields, or a
    function that lists the existing matches of a glob."""
    if "*" in path:
        pattern = path.rstrip("/")

        def existing() -> list[Path]:
            found = root.glob(pattern)
            return sorted(p for p in found if p.is_dir() == path.endswith("/"))

        return existing
    if arity(path):
        def named(*args: Any) -> Path:
            return root / path.rstrip("/").format(*args)

        return named
    return root / path.rstrip("/")


def study_folders() -> list[str]:
    """Every study's top-level names under a run folder."""
    return list(dict.fromkeys(f for s in studies() for f in s.folders))


# ---- what the module and the CLI ask -----------------------------------------------------------
def model_changing() -> dict[str, Study]:
    """Class name of every model-changing callback -> its study."""
    return {name: s for s in studies() if s.changes_model for name in s.callback_names}


def load_checkpoint_hooks() -> list[Callable[[Any, dict[str, Any]], None]]:
    """The studies' ``load_checkpoint`` functions, in registry order."""
    return [load(s.load_checkpoint) for s in studies() if s.load_checkpoint]


def attached_callbacks(module: Any) -> list[type]:
    """The callback classes the module adds to its fit (studies whose ``attach`` holds)."""
    return [load(s.callbacks[0]) for s in studies() if s.attach and load(s.attach)(module)]

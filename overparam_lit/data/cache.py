"""On-disk cache of generated data sets, so a fit does not regenerate its data at every start.

A cached data set is one ``torch.save`` file of CPU tensors, named by the generator and a hash
of a canonical JSON of everything that changes the data: the generator's name, its recipe
version, this file format's version, every argument, and the versions of the libraries whose
random streams and arithmetic produce the data (torch, numpy, and e.g. ``mnist1d``).

Where it lives (:func:`cache_root`): the ``cache_dir`` a data module is given; else the
environment variable ``OVERPARAM_LIT_CACHE``; else ``$XDG_CACHE_HOME/overparam-lit`` or
``~/.cache/overparam-lit``. The value ``none`` (any case) or an empty string turns caching off.

Writes are atomic (a unique temporary file in the cache folder, then ``os.replace``), so any
number of processes may write the same entry at once and a reader never sees a half file.
A damaged entry (truncated, foreign bytes, wrong contents) is regenerated with a one-line
warning and rewritten; a folder that cannot be written costs one warning per process and the
data are generated as without a cache. Files are read with ``torch.load(weights_only=True)``.

This module imports neither Lightning nor any generator package; callers pass a function that
generates the data and import what it needs inside it, so a cache hit imports nothing more.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from overparam_lit.utils import atomic_write

CACHE_ENV = "OVERPARAM_LIT_CACHE"
"""Environment variable naming the cache folder; ``none`` or an empty value turns caching off."""

FORMAT_VERSION = 1
"""Version of the file layout; bump it when the stored layout changes."""

OFF_VALUES = frozenset({"", "none"})
"""Folder values (compared case-insensitively) that turn the cache off."""

_unwritable_warned: set[str] = set()


class DataCacheWarning(UserWarning):
    """A cache entry was damaged and regenerated, or the cache folder could not be written."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The cache folder, or ``None`` when caching is off.

    Args:
        cache_dir: ``None`` uses ``$OVERPARAM_LIT_CACHE`` if set, else
            ``$XDG_CACHE_HOME/overparam-lit`` or ``~/.cache/overparam-lit``; a path uses that
            folder; ``"none"`` (or an empty string, also as the environment value) turns the
            cache off.
    """
    if cache_dir is None:
        env = os.environ.get(CACHE_ENV)
        if env is None:
            xdg = os.environ.get("XDG_CACHE_HOME")
            base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
            return base / "overparam-lit"
        cache_dir = env
    text = os.fspath(cache_dir)
    if text.strip().lower() in OFF_VALUES:
        return None
    return Path(text).expanduser()


def library_versions(*packages: str) -> dict[str, str]:
    """Versions of torch, numpy and the named installed ``packages`` (for a cache key)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__, "numpy": np.__version__}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def canonical_key(name: str, recipe: int, args: Mapping[str, Any], versions: Mapping[str, str]) -> str:
    """The canonical JSON text that identifies one cached data set.

    ``args`` must be JSON values (numbers, strings, booleans, ``None``, lists, dicts; numpy and
    torch scalars count as their Python values). ``1`` and ``1.0`` are different keys, which
    costs at most a second entry, never a wrong hit.
    """
    doc = {"name": name, "recipe": int(recipe), "format": FORMAT_VERSION,
           "args": dict(args), "versions": dict(versions)}
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=True, default=_scalar)
    except TypeError as err:
        raise TypeError(f"data cache arguments of {name!r} must be JSON values: {err}") from err


def cache_path(root: Path, name: str, key: str) -> Path:
    """Path of the entry with canonical ``key`` of generator ``name`` under ``root``."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return root / f"{name}-{digest}.pt"


def _scalar(value: Any) -> Any:
    if isinstance(value, (np.generic, Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not a JSON value")


class _Damaged(Exception):
    """An existing cache file that does not hold the expected entry."""


def _read(path: Path, key: str, keys: Collection[str] | None) -> dict[str, Tensor]:
    with open(path, "rb") as fh:  # an OSError here means no usable entry, not a damaged one
        try:
            obj = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, foreign bytes, a pickle weights_only refuses
            first_line = (str(err).strip().splitlines() or [""])[0][:200]
            raise _Damaged(f"{type(err).__name__}: {first_line}") from err
    if not isinstance(obj, dict) or obj.get("key") != key:
        raise _Damaged("it holds another entry")
    tensors = obj.get("tensors")
    if not isinstance(tensors, dict) or not tensors or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()
    ):
        raise _Damaged("it holds no tensors")
    if keys is not None and set(tensors) != set(keys):
        raise _Damaged(f"it holds {sorted(tensors)} instead of {sorted(keys)}")
    return tensors


def _write(path: Path, key: str, tensors: Mapping[str, Tensor]) -> None:
    payload = {"key": key, "tensors": dict(tensors)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp), sync=False)


def cached_tensors(
    name: str,
    args: Mapping[str, Any],
    generate: Callable[[], Mapping[str, Tensor]],
    *,
    recipe: int = 1,
    packages: tuple[str, ...] = (),
    keys: Collection[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Tensor]:
    """Tensors of a generated data set, from the on-disk cache or from ``generate()``.

    Args:
        name: the generator's name (also the file-name prefix), e.g. ``"mnist1d"``.
        args: every argument that changes the generated data, as JSON values.
        generate: makes the data (a dict of CPU tensors) on a miss.
        recipe: the generator's recipe version; bump it when its code changes the data.
        packages: installed packages whose version is part of the key (e.g. ``("mnist1d",)``).
        keys: the tensor names a valid entry holds (a file with others is damaged).
        cache_dir: see :func:`cache_root`.

    Returns:
        A dict of CPU tensors equal bit for bit (values and dtypes) to ``generate()``'s.
    """
    root = cache_root(cache_dir)
    if root is None:
        return dict(generate())
    key = canonical_key(name, recipe, args, library_versions(*packages))
    path = cache_path(root, name, key)
    try:
        return _read(path, key, keys)
    except OSError:  # absent, or the folder cannot be read: generate (and try to write)
        pass
    except _Damaged as err:
        warnings.warn(f"overparam-lit: data cache file {path} is damaged ({err}); regenerating it.",
                      DataCacheWarning, stacklevel=2)
    tensors = dict(generate())
    try:
        _write(path, key, tensors)
    except OSError as err:
        if str(root) not in _unwritable_warned:
            _unwritable_warned.add(str(root))
            warnings.warn(
                f"overparam-lit: cannot write the data cache folder {root} ({err}); generating data "
                f"sets without it. Set {CACHE_ENV} or --data.cache_dir to a writable folder, or "
                "to 'none' to turn the cache off.", DataCacheWarning, stacklevel=2)
    return tensors

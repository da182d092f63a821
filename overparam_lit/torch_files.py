"""Reading torch files with an error that says what is wrong with the file: a missing, empty,
truncated or corrupt mask, rewind state, plane bank or Lightning checkpoint is refused in one
paragraph (what, the file, the fix) instead of torch's traceback. Pure (no Lightning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overparam_lit.utils import ConfigError

__all__ = ["checkpoint_problem", "load_torch_file", "read_checkpoint"]

LAST_CKPT = "last.ckpt"


def _torch_load(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # readable, but holds objects beyond plain tensors
        if "weights_only" not in str(err).lower() and "weights only" not in str(err).lower():
            raise
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable, non-empty file, or ``None``."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "it is a folder, not a file"
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot read it ({err.strerror or err})"
    return "the file is empty (0 bytes)" if size == 0 else None


def _load_problem(err: Exception) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"it does not load ({type(err).__name__}: {reason[:200]}); it is damaged or truncated"


def load_torch_file(path: str | Path, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or a :class:`ConfigError` saying what is
    wrong with the file (missing, a folder, empty, truncated or corrupt): masks, rewind states and
    plane banks are read through it."""
    import torch

    path = Path(path)
    problem = _file_problem(path)
    if problem is None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
            problem = _load_problem(err)
    raise ConfigError(f"{what} cannot be read: {problem} (got {str(path)!r}). {fix}")


def _inspect_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    problem = _file_problem(path)
    if problem is not None:
        return None, problem.replace("a file", "a checkpoint file")
    try:
        ckpt = _torch_load(path)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        return None, _load_problem(err)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return None, "it loads but is not a Lightning checkpoint (no 'state_dict')"
    return ckpt, None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a loadable Lightning checkpoint, or ``None`` when it is."""
    return _inspect_checkpoint(Path(path))[1]


def read_checkpoint(path: str | Path, option: str = "--ckpt_path", use: str | None = None,
                    otherwise: str | None = None) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, or raise :class:`ConfigError` saying what is
    wrong with it and naming the newest intact checkpoint beside it (the one to resume from; ``use``
    says what to do with it) or, when there is none, the fix ``otherwise``."""
    use = use or f"resume with {option}"
    otherwise = otherwise or f"start the fit again without {option}"
    path = Path(path)
    ckpt, problem = _inspect_checkpoint(path)
    if ckpt is not None:
        return ckpt
    folder = path if path.is_dir() else path.parent
    candidates = [p for p in sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
                  if p.is_file() and p.resolve() != path.resolve()] if folder.is_dir() else []
    intact = next((p for p in candidates if checkpoint_problem(p) is None), None)
    if intact is not None:
        fix = f"The newest intact checkpoint there is {intact}: {use} {intact}."
    elif path.is_dir():
        fix = f"Give a checkpoint file, e.g. {option} {path / LAST_CKPT}."
    else:
        fix = f"No intact checkpoint lies beside it: {otherwise}."
    raise ConfigError(f"{option} cannot be read: {problem} (got {str(path)!r}). {fix}")

"""Config files given with ``-c``: a path that does not exist falls back to the packaged fragment of
the same relative name (``callbacks/imp.yaml``, ``configs/quickstart.yaml``)."""

from __future__ import annotations

from pathlib import Path

FRAGMENTS = Path(__file__).resolve().parent.parent / "fragments"
"""Packaged copies of the repository's ``callbacks/*.yaml`` and ``configs/*.yaml`` (links to them
in a source checkout), used when ``-c callbacks/imp.yaml`` is not found from the working folder."""


def resolve_fragment(path: str) -> str:
    """``path`` as given when it exists, else the packaged fragment of the same relative name
    (``callbacks/imp.yaml``, ``configs/quickstart.yaml``) when the package ships one."""
    if not path or Path(path).exists() or Path(path).is_absolute():
        return path
    packaged = FRAGMENTS / path
    return str(packaged) if packaged.is_file() else path


def resolve_config_args(argv: list[str]) -> list[str]:
    """Replace the values of ``-c``/``--config`` that do not exist by their packaged fragments."""
    out: list[str] = []
    take = False
    for arg in argv:
        if take:
            out.append(resolve_fragment(arg))
            take = False
        elif arg in ("-c", "--config"):
            out.append(arg)
            take = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_fragment(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out

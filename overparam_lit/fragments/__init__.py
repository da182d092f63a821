"""YAML fragments shipped with the package: ``callbacks/*.yaml`` and ``configs/*.yaml``.

In a source checkout these are links to the repository's ``callbacks/`` and ``configs/`` folders
(the single source); a built wheel holds copies. ``overparam-lit fit -c callbacks/imp.yaml`` uses
them when the path does not exist from the working folder (see
:func:`overparam_lit.cli.resolve_fragment`).
"""

from pathlib import Path

FRAGMENTS = Path(__file__).resolve().parent
"""This folder."""


def fragment_names() -> list[str]:
    """Every packaged fragment as the relative path ``-c`` takes, e.g. ``callbacks/imp.yaml``."""
    return sorted(str(p.relative_to(FRAGMENTS)) for p in FRAGMENTS.glob("*/*.yaml"))

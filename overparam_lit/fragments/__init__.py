"""YAML fragments shipped with the package: ``callbacks/*.yaml`` and ``configs/*.yaml``.

In a source checkout these are links to the repository's ``callbacks/`` and ``configs/`` folders
(the single source); a built wheel holds copies. ``overparam-lit fit -c callbacks/imp.yaml`` uses
them when the path does not exist from the working folder (:func:`resolve_fragment`). This
module imports nothing heavy: the command's entry point reads ``-c`` files through it before the
CLI loads (:mod:`overparam_lit.wandb_mode`).
"""

from pathlib import Path

FRAGMENTS = Path(__file__).resolve().parent
"""This folder."""


def fragment_names() -> list[str]:
    """Every packaged fragment as the relative path ``-c`` takes, e.g. ``callbacks/imp.yaml``."""
    return sorted(str(p.relative_to(FRAGMENTS)) for p in FRAGMENTS.glob("*/*.yaml"))


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

"""Which W&B mode a run uses, decided without importing W&B or Lightning: the ``--wandb.mode``
rule (``auto`` is online with credentials, offline without; ``WANDB_MODE`` decides ``auto``) and
the mode an ``overparam-lit`` command line asks for, read from its options and ``-c`` files
before the CLI parses them (:mod:`overparam_lit.entry`, the sweep's fit servers)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from overparam_lit.fragments import resolve_fragment

RUN_SUBCOMMANDS = ("fit", "validate", "test")
"""The subcommands that start a W&B run (unless W&B is disabled)."""


def wandb_has_credentials() -> bool:
    """True when an API key is configured through the environment or ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: str, env: Mapping[str, str] | None = None) -> str:
    """Turn ``auto`` into ``online`` or ``offline``; never prompts and never waits on a network."""
    env = os.environ if env is None else env
    value = env.get("WANDB_MODE", "").lower()
    if mode == "auto":
        if value in ("online", "offline", "disabled"):
            return value
        if value == "dryrun":
            return "offline"
        return "online" if wandb_has_credentials() else "offline"
    return mode


def _option_values(args: Sequence[str], *names: str) -> list[str]:
    """The values of ``--name value`` and ``--name=value`` options in ``args``, in order."""
    values = []
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                values.append(args[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg[len(name) + 1:])
    return values


def config_wandb_mode(path: str | Path) -> str | None:
    """``wandb.mode`` of a YAML config file, or ``None`` (not set, or not a readable mapping)."""
    import yaml

    with contextlib.suppress(OSError, ValueError, AttributeError, yaml.YAMLError):
        wandb = (yaml.safe_load(Path(path).read_text()) or {}).get("wandb")
        if isinstance(wandb, dict) and wandb.get("mode"):
            return str(wandb["mode"])
    return None


def wandb_mode_in(args: Sequence[str], default: str = "auto") -> str:
    """The ``--wandb.mode`` a command line asks for: its last ``--wandb.mode`` option, else the
    last of its ``-c``/``--config`` files (or the packaged fragments they name, as the CLI reads
    them) that sets ``wandb.mode``, else ``default``."""
    given = _option_values(args, "--wandb.mode")
    if given:
        return given[-1]
    mode = default
    for path in _option_values(args, "-c", "--config"):
        mode = config_wandb_mode(resolve_fragment(path)) or mode
    return mode


def command_wandb_mode(args: Sequence[str], env: Mapping[str, str] | None = None) -> str | None:
    """The W&B mode (``online``, ``offline`` or ``disabled``) of the run that ``overparam-lit
    ARGS`` starts in this process; ``disabled`` where it starts none (another subcommand, help or
    config printing, a DDP rank other than zero), ``None`` where the command line sets the W&B
    options in a form this reading does not follow (``--wandb`` as a whole)."""
    env = os.environ if env is None else env
    if not args or args[0] not in RUN_SUBCOMMANDS:
        return "disabled"
    if any(a in ("-h", "--help") or a.startswith("--print_config") for a in args):
        return "disabled"
    if any(env.get(key, "0") != "0" for key in ("LOCAL_RANK", "RANK", "SLURM_PROCID")):
        return "disabled"  # DDP ranks other than zero (torchrun, Lightning, srun) log nothing
    if any(a == "--wandb" or a.startswith("--wandb=") for a in args):
        return None
    return resolve_wandb_mode(wandb_mode_in(args[1:]), env)

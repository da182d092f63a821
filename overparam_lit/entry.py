"""The ``overparam-lit`` command (and ``python -m overparam_lit``): starts W&B ahead of Lightning
when the command line is going to start a W&B run, then runs :func:`overparam_lit.cli.main`.

Why the order matters: ``wandb.init`` imports W&B's launch-inputs module, whose pydantic models
each look up the module they were defined in by walking every loaded module
(``inspect.getmodule`` on an import frame). After Lightning, torchmetrics and torch (about 3,600
modules) that walk costs 0.3-0.4 s of every fit; before them, a third of that. W&B's service
process starts here too (``wandb.setup``, in a thread), so it comes up while Lightning imports.

The mode is read from the command line (:func:`~overparam_lit.wandb_mode.command_wandb_mode`)
with the rule the CLI applies once it has parsed the config; the CLI confirms it before the run
starts (:func:`settle_early_wandb`) and undoes the early start where it differs. A command line
that turns W&B off (``--wandb.mode disabled``, the same in a ``-c`` config, or
``WANDB_MODE=disabled`` with mode ``auto``) imports no W&B at all.

This module imports nothing heavy itself.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from overparam_lit.wandb_mode import command_wandb_mode

_EARLY: dict[str, Any] = {}
"""The early start: ``mode``, the ``env`` values it replaced and the setup ``thread``."""


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def start_wandb(mode: str) -> threading.Thread | None:
    """Import W&B (with the cycle collector paused, as the CLI's own imports are), set the
    environment W&B reads at set-up for ``mode`` (``WANDB_SILENT``, and ``WANDB_MODE=dryrun``
    offline, as ``WandbLogger`` does before ``wandb.init``), and start W&B's service in a thread
    while this thread imports the module ``wandb.init`` imports next. Returns the thread (an error
    in it is left for ``wandb.init`` to raise); ``None`` without W&B."""
    with _collector_paused():
        try:
            import wandb
        except ImportError:
            return None
        os.environ.setdefault("WANDB_SILENT", "true")
        if mode == "offline":
            os.environ["WANDB_MODE"] = "dryrun"

        def setup() -> None:
            with contextlib.suppress(Exception):
                wandb.setup()

        service = threading.Thread(target=setup, name="wandb-service-start", daemon=True)
        service.start()
        with contextlib.suppress(ImportError):
            import wandb.sdk.launch.inputs.internal  # noqa: F401
    return service


def start_wandb_early(mode: str) -> None:
    """:func:`start_wandb` before the CLI loads, remembering what :func:`settle_early_wandb` needs
    to undo it."""
    env = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")}
    service = start_wandb(mode)
    if service is not None:
        _EARLY.update(mode=mode, env=env, thread=service)


def settle_early_wandb(mode: str) -> None:
    """Called by the CLI with the W&B mode it resolved for this process (``disabled`` where it
    starts no run): keeps an early start of the same mode, else tears it down and restores the
    environment it changed. Idempotent; a no-op without an early start."""
    if not _EARLY:
        return
    early = dict(_EARLY)
    _EARLY.clear()
    early["thread"].join()
    if early["mode"] == mode:
        return
    import wandb

    with contextlib.suppress(Exception):
        wandb.teardown()
    for key, value in early["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def main() -> int | None:
    """Console entry point (see the module docstring); the CLI's exit codes pass through."""
    mode = command_wandb_mode(sys.argv[1:])
    if mode in ("online", "offline"):
        start_wandb_early(mode)
    from overparam_lit.cli import main as cli_main

    return cli_main()

"""The CLI's argument parser: a parser error is one line with its fix (:mod:`.explain`)."""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from overparam_lit.cli.explain import explain_parser_error, read_parser_message

DEBUG_ENV = "OVERPARAM_LIT_DEBUG"
"""``OVERPARAM_LIT_DEBUG=1`` prints jsonargparse's full message below the one-line explanation of a
parser error (``JSONARGPARSE_DEBUG`` shows jsonargparse's own output and traceback instead)."""


class OverparamArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors print one line, message first, with the fix
    (:func:`explain_parser_error`) and without the usage (``--help`` shows it); jsonargparse's full
    message follows with ``OVERPARAM_LIT_DEBUG=1``."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not getattr(self, "exit_on_error", True) or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            explained = explain_parser_error(parser, message)
        except Exception:  # noqa: BLE001  (never hide the parser's message behind a failed explanation)
            explained = None
        if explained is None:
            first = read_parser_message(message)
            text = (f"{message.strip()}\nRun `{prog} --help` for every option." if debug or not first.reason
                    else f"{_oneline(first.key, first.reason)} Run `{prog} --help` for every option "
                    f"(full parser message: {DEBUG_ENV}=1).")
        else:
            what, fix = explained
            text = f"{what}{'' if what.endswith('?') else '.'} {fix}" + (
                "" if debug else f" (full parser message: {DEBUG_ENV}=1)")
            if debug:
                text += f"\nThe parser's message:\n{message.rstrip()}"
        sys.stderr.write(f"{prog}: error: {text}\n")
        self.exit(2)


def _oneline(key: str, reason: str) -> str:
    reason = reason.rstrip(".")
    return f"--{key}: {reason}." if key and not reason.startswith(("--", key)) else f"{reason}."

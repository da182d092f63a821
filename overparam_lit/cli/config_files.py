"""Config files given with ``-c``: a path that does not exist falls back to the packaged fragment of
the same relative name (``callbacks/imp.yaml``, ``configs/quickstart.yaml``). The rule lives in
:mod:`overparam_lit.fragments`, beside the fragments, which imports nothing heavy."""

from __future__ import annotations

from overparam_lit.fragments import FRAGMENTS, resolve_config_args, resolve_fragment

__all__ = ["FRAGMENTS", "resolve_config_args", "resolve_fragment"]

"""The members table (every member's metrics per epoch in ``members.csv`` and a W&B table),
declared for :mod:`overparam_lit.registry`: the module adds its callback to every fit with
members."""

from __future__ import annotations

from typing import Any

from overparam_lit.registry import Study, register


def has_members(module: Any) -> bool:
    """True for a module that trains stacked members."""
    return getattr(module, "members", None) is not None


MEMBERS = register(Study(
    "members",
    callback="overparam_lit.callbacks.members.MembersTable",
    attach="overparam_lit.studies.members_study.has_members",
    reader="overparam_lit.studies.results.member_finals",
    figures=("double-descent", "success"),
))
